"""`python -m trainer.job_result RESULT.json --url URL --job ID --attempt N`: report a result.

A tokenizer job's workload runs `python -m trainer.tokenizer.cli job CONFIG`, which prints its
result (`{"path", "report"}`) as JSON; the workload keeps that file beside the tokenizer and
then runs this, which posts it to the service (`POST /v1/jobs/{id}/result`) with the attempt's
ingest token from PRETRAIN_INGEST_TOKEN. It exits 1 when the service did not take it, so the
workload fails rather than succeeding with no result on record.
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
        prog="python -m trainer.job_result", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    parser.add_argument("result", help='the JSON file of the result: {"path", "report"}')
    parser.add_argument("--url", required=True, help="the service, e.g. http://pretrain-api:8000")
    parser.add_argument("--job", required=True, help="the job id")
    parser.add_argument("--attempt", type=int, required=True, help="the attempt reporting")
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
    if not isinstance(result, dict) or not {"path", "report"} <= set(result):
        print(f'error: {args.result} is not a {{"path", "report"}} result', file=sys.stderr)
        return 1
    payload = {"attempt": args.attempt, "path": result["path"], "report": result["report"]}
    token = os.environ.get(INGEST_TOKEN_ENV) or None
    if not post_result(args.url, args.job, token, payload, deadline_s=args.deadline_s):
        print(f"error: the service at {args.url} did not take the result", file=sys.stderr)
        return 1
    print(f"reported the result of job {args.job} attempt {args.attempt}: {result['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
