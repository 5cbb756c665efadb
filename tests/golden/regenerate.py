"""Rewrite tiny_losses.json from a fresh seeded run: only after a deliberate numerics change.

    .venv/bin/python tests/golden/regenerate.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests.trainer.test_train import GOLDEN, losses, run_trainer, tiny_config


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "golden"
        config = tiny_config(run, steps=20)
        config["checkpoint"]["interval_steps"] = 0
        run_trainer(run, config)
        GOLDEN.write_text(json.dumps({"config": "tests/trainer/test_train.py::tiny_config(steps=20)", "losses": losses(run)}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
