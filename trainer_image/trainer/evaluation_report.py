"""`python -m trainer.evaluation_report RESULT.json --url URL --job ID --step N`: report scores.

An evaluation workload runs `python -m trainer.benchmarks ... --out RESULT.json` (which scores
one checkpoint with lm-eval), then this, which posts the result (`{"step", "results"}`) to the
service (`POST /v1/jobs/{id}/evaluations`) with the evaluation's token from
PRETRAIN_INGEST_TOKEN. It exits 1 when the service did not take it, so the workload fails rather
than succeeding with no scores on record.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer.report import INGEST_TOKEN_ENV, post_result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.evaluation_report",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    parser.add_argument("result", help='the runner\'s RESULT.json: {"step", "results": [...]}')
    parser.add_argument("--url", required=True, help="the service, e.g. http://pretrain-api:8000")
    parser.add_argument("--job", required=True, help="the job id")
    parser.add_argument("--step", type=int, required=True, help="the checkpoint step scored")
    parser.add_argument("--deadline-s", type=float, default=300.0, help="give up after this long")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = json.loads(Path(args.result).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"error: cannot read the result {args.result}: {error}", file=sys.stderr)
        return 1
    if not isinstance(result, dict) or not isinstance(result.get("results"), list):
        print(f'error: {args.result} is not a {{"step", "results"}} result', file=sys.stderr)
        return 1
    if result.get("step", args.step) != args.step:
        print(
            f"error: {args.result} scores step {result['step']}, not {args.step}", file=sys.stderr
        )
        return 1
    payload = {"step": args.step, "results": result["results"]}
    token = os.environ.get(INGEST_TOKEN_ENV) or None
    delivered = post_result(
        args.url, args.job, token, payload, resource="evaluations", deadline_s=args.deadline_s
    )
    if not delivered:
        print(f"error: the service at {args.url} did not take the scores", file=sys.stderr)
        return 1
    print(f"reported the scores of job {args.job} step {args.step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
