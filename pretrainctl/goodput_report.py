"""The run report's goodput and progress: where the wall time went, as a table and a bar."""

from __future__ import annotations

import html
from typing import Any

from pretrainctl.output import duration, progress_line

COLOURS = {
    "productive": "#2ca02c", "lost": "#d62728", "checkpoint": "#1f77b4", "stalled": "#9467bd",
    "queued": "#ff7f0e", "startup": "#8c564b", "other": "#c7c7c7",
}  # fmt: skip


def summary(goodput: dict[str, Any] | None) -> dict[str, Any] | None:
    """The figures summary.json keeps: seconds per category, the ratio, plan against realised."""
    if goodput is None:
        return None
    return {
        "wall_s": goodput["wall_s"],
        "goodput": goodput["goodput"],
        "seconds": {name: c["seconds"] for name, c in goodput["categories"].items()},
        "lost_steps": goodput["lost_steps"],
        "planned_training_s": goodput["planned_training_s"],
        "realised_training_s": goodput["realised_training_s"],
    }


def line(figures: dict[str, Any]) -> str:
    """One line for a terminal from `summary`'s figures: the ratio, then each category that took time."""
    parts = ", ".join(f"{name} {duration(seconds)}" for name, seconds in figures["seconds"].items() if seconds > 0)
    planned = figures["planned_training_s"]
    return (
        f"goodput {figures['goodput']:.1%} of {duration(figures['wall_s'])} wall time: {parts}; training "
        f"{duration(figures['realised_training_s'])} realised"
        + (f" vs {duration(planned)} planned" if planned is not None else "")
    )


def html_section(goodput: dict[str, Any] | None, progress: dict[str, Any] | None) -> str:
    if goodput is None:
        return ""
    width, x, bar = 760, 0.0, []
    for name, category in goodput["categories"].items():
        share = category["fraction"] * width
        if share > 0:
            bar.append(
                f'<rect x="{x:.1f}" y="0" width="{share:.1f}" height="24" fill="{COLOURS.get(name, "#999")}">'
                f"<title>{html.escape(name)} {category['fraction']:.1%}</title></rect>"
            )
            x += share
    rows = [
        f'<tr><th><span style="color:{COLOURS.get(name, "#999")}">■</span> {html.escape(name)}</th>'
        f"<td>{duration(c['seconds'])}</td><td>{c['fraction']:.1%}</td></tr>"
        for name, c in goodput["categories"].items()
    ]
    planned = goodput["planned_training_s"]
    facts = [
        ("goodput (productive / wall)", f"{goodput['goodput']:.1%} of {duration(goodput['wall_s'])}"),
        ("steps trained and thrown away", str(goodput["lost_steps"])),
        ("training time: realised vs planned",
         f"{duration(goodput['realised_training_s'])} vs {duration(planned) if planned is not None else '-'}"),
    ]  # fmt: skip
    if progress is not None:
        facts.append(("progress", progress_line(progress)))
    facts_html = "".join(f"<tr><th>{html.escape(k)}</th><td colspan=2>{html.escape(v)}</td></tr>" for k, v in facts)
    return (
        "<h2>Goodput: where the wall time went</h2>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="24">{"".join(bar)}</svg>'
        f"<table>{facts_html}{''.join(rows)}</table>"
    )
