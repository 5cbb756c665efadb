"""`pretrainctl scaling fit`: a runs CSV (or this install's finished jobs) to the API's
scaling fit, printed for people or as JSON, and drawn into a PNG."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import click

from pretrainctl.client import ApiError

REQUIRED_COLUMNS = ("params", "tokens", "flops", "loss")
OPTIONAL_COLUMNS = ("nll", "accuracy")


class CsvRow:
    """Where a run came from in the CSV: its line, so that a refusal can point at it."""

    def __init__(self, line: int, run: dict[str, float]) -> None:
        self.line, self.run = line, run


def read_runs(path: Path) -> list[CsvRow]:
    """The CSV's runs; ClickException naming the line and column of the first bad value."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if missing or unknown:
            raise click.ClickException(
                f"{path}: line 1 (header) must name the columns {','.join(REQUIRED_COLUMNS)} and "
                f"optionally {','.join(OPTIONAL_COLUMNS)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(unknown)}" if unknown else "")
            )
        rows = []
        for record in reader:
            line = reader.line_num
            values = {k.strip(): (v or "").strip() for k, v in record.items() if k is not None}
            if not any(values.values()):
                continue  # a blank line
            run = {}
            for column, text in values.items():
                if column in OPTIONAL_COLUMNS and text == "":
                    continue
                try:
                    number = float(text)
                except ValueError:
                    raise click.ClickException(
                        f"{path}: line {line}, column {column}: {text!r} is not a number"
                    ) from None
                if not math.isfinite(number):
                    raise click.ClickException(
                        f"{path}: line {line}, column {column}: {text} is not a finite number"
                    )
                run[column] = number
            rows.append(CsvRow(line, run))
    if not rows:
        raise click.ClickException(f"{path}: no runs, only a header")
    return rows


def refusal_lines(exc: ApiError, rows: list[CsvRow] | None, path: Path | None) -> list[str]:
    """The API's 422, a run's index turned back into the CSV line it came from."""
    lines = []
    for problem in exc.detail if isinstance(exc.detail, list) else []:
        loc = [part for part in problem.get("loc", []) if part != "body"]
        if (
            rows is not None
            and len(loc) >= 2
            and loc[0] == "runs"
            and isinstance(loc[1], int)
            and loc[1] < len(rows)
        ):
            column = f", column {loc[2]}" if len(loc) > 2 else ""
            lines.append(f"{path}: line {rows[loc[1]].line}{column}: {problem['msg']}")
        else:
            lines.append(f"{'.'.join(map(str, loc)) or 'body'}: {problem.get('msg', problem)}")
    return lines or exc.lines()


def show_fit(fit: dict[str, Any]) -> None:
    """The law, the groups it came from, the benchmark steps, warnings, and whether it was saved."""
    law = fit["optimal_tokens"]
    click.echo(
        f"law          N*(C) = A·C^alpha, A = {law['A']:.4g} {_ci(law['ci95']['A'], '.3g')}, "
        f"alpha = {law['alpha']:.4f} {_ci(law['ci95']['alpha'], '.4f')} "
        f"({law['points']} budgets, {len(fit['runs'])} runs, from {fit['source']})"
    )
    loss = fit["loss"]
    click.echo(f"loss         L*(C) = {loss['A']:.4g}·C^{loss['alpha']:.4f}")
    for group in fit["groups"]:
        click.echo(
            f"  C {group['flops']:.3e}: N* {group['optimal_tokens']:.3e} tokens on {group['optimal_params']:.3e} "
            f"params, L* {group['min_loss']:.4f} ({group['runs']} runs)"
        )
    if benchmark := fit.get("benchmark"):
        nll, s = benchmark["nll"], benchmark["accuracy"]
        click.echo(
            f"benchmark    NLL*(C) = {nll['A']:.4g}·C^{nll['alpha']:.4f} (compute-optimal runs)"
        )
        click.echo(
            f"             accuracy = {s['floor']:.3f} + ({s['ceiling']:.3f} − {s['floor']:.3f}) / "
            f"(1 + exp({s['slope']:.3g}·(nll − {s['midpoint']:.4f}))) ({s['points']} runs)"
        )
    for skipped in fit.get("skipped", []):
        click.echo(f"left out     job {skipped['job_id']}: {skipped['reason']}")
    for warning in fit["warnings"]:
        click.echo(f"warning      {warning}")
    if saved := fit.get("saved"):
        click.echo(f"saved        law {saved['id']}: plans now predict with it")


def _ci(interval: list[float] | None, spec: str) -> str:
    return (
        "[no interval: 2 budgets]"
        if interval is None
        else f"[{interval[0]:{spec}}, {interval[1]:{spec}}]"
    )
