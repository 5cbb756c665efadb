"""Write service/embedded_sizes.py: the embedded corpora's sizes with the default byte tokenizer.

The service must not import the trainer (it needs torch), so the planner reads these figures
from a table; tests/service/test_sources.py holds the table equal to a real count. Run it
again (`.venv/bin/python scripts/embedded_sizes.py`) when the corpora or Python change.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "service" / "embedded_sizes.py"


def count() -> dict[str, tuple[int, int]]:
    """(documents, tokens) of each embedded corpus: UTF-8 bytes plus one EOD per document."""
    sys.path.insert(0, str(ROOT / "trainer_image"))
    try:
        from trainer.corpora import EMBEDDED_CORPORA, embedded_documents
    except ImportError:  # before the corpora moved out of trainer.data
        from trainer.data import EMBEDDED_CORPORA, embedded_documents
    sizes = {}
    for name in EMBEDDED_CORPORA:
        documents = embedded_documents(name)
        sizes[name] = (len(documents), sum(len(text.encode("utf-8")) + 1 for text in documents))
    return sizes


def render(sizes: dict[str, tuple[int, int]]) -> str:
    import jieba

    rows = "".join(f'    "{name}": ({documents}, {tokens}),\n' for name, (documents, tokens) in sizes.items())
    return (
        '"""Sizes of the embedded corpora with the byte tokenizer, written by scripts/embedded_sizes.py.\n\n'
        f"Counted on Python {platform.python_version()} and jieba {jieba.__version__} (the `code` and `en` corpora come from the\n"
        "standard library, `zh` from jieba's dictionary); a test holds them equal to a real count.\n"
        '"""\n\n'
        f'BASIS = "byte tokenizer, Python {platform.python_version()}, jieba {jieba.__version__}"\n'
        "# name: (documents, tokens), every document's UTF-8 bytes and its EOD.\n"
        f"BYTE_TOKENIZER_SIZES: dict[str, tuple[int, int]] = {{\n{rows}}}\n"
    )


if __name__ == "__main__":
    TARGET.write_text(render(count()))
    print(f"wrote {TARGET.relative_to(ROOT)}")
