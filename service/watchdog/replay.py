"""Replay a metrics JSONL file through the detector: `pretrainctl watchdog replay FILE|-`.

Prints one JSON line per verdict, `{"job", "step", "kind", "action", "channel"}`. A line may
hold one record or a JSON array of them (an ingest batch); lines that are not records are
skipped with a warning, as a trainer killed mid-write leaves a torn last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml

from service.watchdog.detector import Detector, Policy

log = logging.getLogger(__name__)

VERDICT_FIELDS = ("job", "step", "kind", "action", "channel")


def replay(lines: Iterable[str], policy: Policy | None = None) -> Iterator[dict[str, Any]]:
    """The verdicts of a stream of JSONL lines, as the CLI prints them."""
    detector = Detector(policy or Policy())
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            payload = json.loads(line)
        except ValueError as exc:
            log.warning("line %d is not JSON, skipped: %s", number, exc)
            continue
        for record in payload if isinstance(payload, list) else [payload]:
            try:
                verdicts = detector.observe(record)
            except ValueError as exc:
                log.warning("line %d skipped: %s", number, exc)
                continue
            for verdict in verdicts:
                yield {name: getattr(verdict, name) for name in VERDICT_FIELDS}


def load_policy(path: str) -> Policy:
    """The watchdog knobs from a JSON/YAML file: the knobs themselves or a whole JobSpec."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # YAML reads JSON too
    if isinstance(data, dict) and isinstance(data.get("watchdog"), dict):
        data = data["watchdog"]
    return Policy.from_spec(data or {})


def run_replay(path_or_dash: str, policy_path: str | None, out: TextIO | None = None) -> int:
    """Replay `path_or_dash` ("-" for stdin), print the verdicts to `out` (stdout); exit status."""
    out = out or sys.stdout
    try:
        policy = load_policy(policy_path) if policy_path else Policy()
    except (OSError, yaml.YAMLError, ValueError, TypeError) as exc:
        print(f"watchdog replay: bad policy {policy_path}: {exc}", file=sys.stderr)
        return 2
    try:
        source = sys.stdin if path_or_dash == "-" else open(path_or_dash, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"watchdog replay: cannot read {path_or_dash}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        for verdict in replay(source, policy):
            out.write(json.dumps(verdict) + "\n")
    finally:
        if source is not sys.stdin:
            source.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pretrainctl watchdog replay", description=__doc__.splitlines()[0]
    )
    parser.add_argument("file", help="metrics JSONL file, or - for stdin")
    parser.add_argument("--policy", help="JSON/YAML file with the watchdog knobs")
    args = parser.parse_args(argv)
    return run_replay(args.file, args.policy)


if __name__ == "__main__":
    sys.exit(main())
