"""The report's benchmark section: each task's accuracy and NLL at every checkpoint scored.

From `GET /v1/jobs/{id}/evaluations` (lm-eval on the checkpoints `evaluation.checkpoints`
chose); the chart of accuracy against step is drawn by `run_report`, which owns the charts.
"""

from __future__ import annotations

import html
from typing import Any


def accuracy_by_task(evaluations: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(step, acc) of every succeeded evaluation, per task in the order first met."""
    series: dict[str, list[tuple[float, float]]] = {}
    for row in evaluations:
        if row["state"] == "succeeded" and row["acc"] is not None:
            series.setdefault(row["task"], []).append((row["step"], row["acc"]))
    return series


def html_table(evaluations: list[dict[str, Any]] | None) -> str:
    """One row per task and step: state, accuracy, normalised accuracy, NLL, items, or the error."""
    if not evaluations:
        return ""
    head = (
        "<tr><th>step</th><th>task</th><th>state</th><th>acc</th><th>acc_norm</th>"
        "<th>NLL of the right option</th><th>items</th></tr>"
    )
    rows = []
    for row in evaluations:
        if row["state"] == "succeeded":
            cells = [_fmt(row["acc"]), _fmt(row["acc_norm"]), _fmt(row["nll"]), str(row["samples"])]
        else:
            cells = [row.get("error") or "", "", "", ""]
        values = [str(row["step"]), row["task"], row["state"], *cells]
        rows.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
