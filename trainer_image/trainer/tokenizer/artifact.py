"""A tokenizer directory: what `train` and `expand` write and `report` and `expand` read.

tokenizer.json           the Hugging Face `tokenizers` file (all ids, merges, pipeline)
tokenizer_config.json    for `AutoTokenizer` / `PreTrainedTokenizerFast.from_pretrained`
special_tokens_map.json  the same special tokens, for older readers
vocab_layout.json        where each kind of token sits, padded size, spare rows
vocab_expansion.json     (expand only) old and new sizes, and every added token's id
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
LAYOUT_FILE = "vocab_layout.json"
EXPANSION_FILE = "vocab_expansion.json"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tokenizer_file(path: str | Path) -> Path:
    """The `tokenizer.json` of a directory, or the path itself when it is the file."""
    path = Path(path).expanduser()
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} at {path}")
    return file


def load(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_file(path)))


def load_layout(path: str | Path) -> dict | None:
    """The directory's `vocab_layout.json`, or None for a tokenizer made elsewhere."""
    file = tokenizer_file(path).parent / LAYOUT_FILE
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def save(
    directory: str | Path, tokenizer: Tokenizer, layout: dict, extra: dict[str, dict] | None = None
) -> Path:
    """Write the tokenizer and its metadata files into `directory` (created if missing)."""
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / TOKENIZER_FILE, tokenizer.to_str(pretty=True))
    specials = layout["special_tokens"]
    named = {
        key: specials[key]
        for key in ("bos_token", "eos_token", "pad_token", "unk_token")
        if specials.get(key)
    }
    chat = list(specials.get("chat_tokens") or [])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **named,
        "additional_special_tokens": chat,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    if chat == ["<|im_start|>", "<|im_end|>"]:
        config["chat_template"] = CHATML_TEMPLATE
    _write_json(directory / CONFIG_FILE, config)
    _write_json(directory / SPECIAL_TOKENS_FILE, {**named, "additional_special_tokens": chat})
    _write_json(directory / LAYOUT_FILE, layout)
    for name, content in (extra or {}).items():
        _write_json(directory / name, content)
    return directory


def _write_json(path: Path, content: dict) -> None:
    _write(path, json.dumps(content, ensure_ascii=False, indent=2) + "\n")


def _write(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
