"""A job's run report: per-channel loss across attempts with rollbacks marked, eval perplexity,
the event log and the plan, as one self-contained HTML file (inline SVG, no scripts, no fetches).

`collect` reads everything through the API; `summarize` and `render_html` are pure, so the
report of a month-long run is the same code as the demo's.
"""

from __future__ import annotations

import functools
import html
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pretrainctl import benchmark_report, goodput_report
from pretrainctl.client import ApiClient, ApiError

LOSS_PREFIX = "loss/"
EVAL_LOSS_PREFIX = "eval/loss/"
EVAL_PPL_PREFIX = "eval/ppl/"
# A curve of a long run is downsampled to about this many points per series.
MAX_POINTS_PER_SERIES = 2_000
# "Final loss" is the mean training loss of this many last steps: one step's loss is too noisy.
FINAL_LOSS_STEPS = 10
ATTEMPT_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
BASELINE_COLOUR = "#7f7f7f"


@dataclass
class RunData:
    """What the API knows about one job: the job, its audit log and its stored metric points."""

    job: dict[str, Any]
    events: list[dict[str, Any]]
    points: list[dict[str, Any]]
    # GET /v1/jobs/{id}/data: tokens per channel, planned against consumed (None: not served).
    data: dict[str, Any] | None = None
    # GET /v1/jobs/{id}/goodput (None: not served).
    goodput: dict[str, Any] | None = None
    # GET /v1/jobs/{id}/evaluations: benchmark scores per step and task (None: not served).
    evaluations: list[dict[str, Any]] | None = None

    def series(self, name: str, attempt: int) -> list[tuple[int, float]]:
        """(step, value) of one metric of one attempt, finite values only, by step."""
        return self._series_index.get((name, attempt), [])

    @functools.cached_property
    def _series_index(self) -> dict[tuple[str, int], list[tuple[int, float]]]:
        # Every chart reads several series: group the points once, not once per series.
        index: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for p in self.points:
            if p["value"] is not None:
                index.setdefault((p["name"], p["attempt"]), []).append((p["step"], p["value"]))
        for values in index.values():
            values.sort()
        return index

    def channels(self) -> list[str]:
        """Channels in the order the spec first names them."""
        names: list[str] = []
        for stage in self.job["spec"].get("stages", []):
            for source in stage.get("data", []):
                if source["channel"] not in names:
                    names.append(source["channel"])
        return names

    def attempt_numbers(self) -> list[int]:
        return sorted(a["number"] for a in self.job["attempts"])

    def rollbacks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == "job.rolled_back"]

    def corrupt_windows(self) -> list[tuple[str, int, int]]:
        """Fault-injection windows of the spec: (channel, start, end) in first-plan steps."""
        return [
            (source["channel"], int(start), int(end))
            for stage in self.job["spec"].get("stages", [])
            for source in stage.get("data", [])
            for start, end in source.get("corrupt_steps") or []
        ]


@dataclass
class Summary:
    """The figures a person reads first."""

    job_id: int
    name: str
    state: str
    attempts: int
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    final_loss: float | None = None
    final_eval_loss: float | None = None
    final_eval_ppl: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, int] = field(default_factory=dict)
    # channel -> {"planned": share of the plan's tokens by the last step, "consumed": share of
    # the tokens the trainer reported consumed}; empty when the job reported none.
    data_mix: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # goodput_report.summary: seconds per category, ratio, planned vs realised; None: not served.
    goodput: dict[str, Any] | None = None
    # The job's progress object (steps done, percent, tokens/s, ETA), as the API gave it.
    progress: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def collect(client: ApiClient, job_id: int) -> RunData:
    """Everything the report needs, through the API (events paged, long series downsampled)."""
    job = client.get_job(job_id)
    events: list[dict[str, Any]] = []
    after = None
    while True:
        page = client.events(job_id, after=after, limit=500)
        events.extend(page["data"])
        if page.get("next_cursor") is None or not page["data"]:
            break
        after = page["data"][-1]["id"]
    points = client.metrics(job_id, limit=100_000, max_points=MAX_POINTS_PER_SERIES)
    try:
        data = client.job_data(job_id)
    except ApiError as exc:  # a server from before the data accounting
        if exc.status_code not in (404, 409):
            raise
        data = None
    return RunData(
        job=job, events=events, points=points, data=data,
        goodput=_optional(client.goodput, job_id), evaluations=_optional(client.evaluations, job_id),
    )  # fmt: skip


def _optional(read, job_id: int) -> dict[str, Any] | None:
    """What a route added later answers, or None from a server that predates it."""
    try:
        return read(job_id)
    except ApiError as exc:
        if exc.status_code == 404 and exc.detail == "Not Found":  # FastAPI's own: no such route
            return None
        raise


def summarize(run: RunData) -> Summary:
    attempts = run.attempt_numbers()
    last = attempts[-1] if attempts else 0
    losses = [value for _, value in run.series("loss", last)]
    eval_loss = run.series("eval/loss", last)
    final_eval_ppl = {}
    for channel in run.channels():
        ppl = run.series(EVAL_PPL_PREFIX + channel, last)
        if ppl:
            final_eval_ppl[channel] = ppl[-1][1]
    verdicts: dict[str, int] = {}
    for event in run.events:
        if event["kind"].startswith("verdict."):
            kind = event["kind"].removeprefix("verdict.")
            verdicts[kind] = verdicts.get(kind, 0) + 1
    return Summary(
        job_id=run.job["id"],
        name=run.job["name"],
        state=run.job["state"],
        attempts=len(attempts),
        rollbacks=[
            {
                "attempt": event["attempt"],
                "actor": event["actor"],
                "why": event["reason"],
                "onset_step": event["data"].get("onset_step"),
                "checkpoint_step": (event["data"].get("checkpoint") or {}).get("step"),
                "skip_range_batches": event["data"].get("skip_range_batches"),
            }
            for event in run.rollbacks()
        ],
        final_loss=statistics.fmean(losses[-FINAL_LOSS_STEPS:]) if losses else None,
        final_eval_loss=eval_loss[-1][1] if eval_loss else None,
        final_eval_ppl=final_eval_ppl,
        verdicts=verdicts,
        data_mix={
            channel["channel"]: {"planned": channel["share_planned"], "consumed": channel["share_consumed"]}
            for channel in (run.data or {}).get("channels", [])
            if channel["tokens_consumed"] is not None
        },
        goodput=goodput_report.summary(run.goodput),
        progress=run.job.get("progress"),
    )


def relative_difference(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return (value - reference) / reference


# ---------------------------------------------------------------- charts


@dataclass
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    colour: str
    dashed: bool = False


def svg_chart(
    series: Sequence[Series],
    *,
    title: str,
    y_label: str,
    x_label: str = "step",
    marks: Iterable[tuple[float, str]] = (),
    bands: Iterable[tuple[float, float, str]] = (),
    log_y: bool = False,
    width: int = 760,
    height: int = 280,
) -> str:
    """A line chart as inline SVG: series as polylines, marks as vertical lines, bands shaded.

    With `log_y` the axis is logarithmic (perplexities span orders of magnitude) and
    non-positive values are left out.
    """
    marks, bands = list(marks), list(bands)
    if log_y:
        series = [
            Series(s.label, [(x, math.log10(y)) for x, y in s.points if y > 0 and math.isfinite(y)], s.colour, s.dashed)
            for s in series
        ]
    xs = [x for s in series for x, _ in s.points] + [x for x, _ in marks] + [v for a, b, _ in bands for v in (a, b)]
    ys = [y for s in series for _, y in s.points if math.isfinite(y)]
    head = f'<figure><figcaption>{html.escape(title)}</figcaption>'
    if not xs or not ys:
        return head + "<p><em>no data</em></p></figure>"
    left, right, top, bottom = 56, 12, 10, 34
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="#fff" stroke="#ccc"/>',
    ]
    for a, b, label in bands:
        parts.append(
            f'<rect x="{px(a):.1f}" y="{top}" width="{max(px(b) - px(a), 1):.1f}" height="{height - top - bottom}" '
            f'fill="#f4c542" fill-opacity="0.25"><title>{html.escape(label)}</title></rect>'
        )
    for tick in _log_ticks(y0, y1) if log_y else _ticks(y0, y1):
        label = f"{10 ** tick:.3g}" if log_y else f"{tick:g}"
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" stroke="#eee"/>'
            f'<text x="{left - 4}" y="{py(tick) + 4:.1f}" font-size="10" text-anchor="end">{label}</text>'
        )
    for tick in _ticks(x0, x1):
        parts.append(
            f'<text x="{px(tick):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">{tick:g}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 4}" font-size="11" text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text x="12" y="{(top + height - bottom) / 2:.0f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {(top + height - bottom) / 2:.0f})">{html.escape(y_label)}</text>'
    )
    for index, (x, label) in enumerate(marks):
        label_y = top + 12 + 12 * (index % 3)  # staggered: marks a few steps apart stay legible
        parts.append(
            f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{height - bottom}" stroke="#000" stroke-dasharray="3 3">'
            f'<title>{html.escape(label)}</title></line>'
            f'<text x="{px(x) + 3:.1f}" y="{label_y}" font-size="10">{html.escape(label)}</text>'
        )
    for s in series:
        finite = [(x, y) for x, y in s.points if math.isfinite(y)]
        if not finite:
            continue
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in finite)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        parts.append(
            f'<polyline fill="none" stroke="{s.colour}" stroke-width="1.5"{dash} points="{coords}">'
            f"<title>{html.escape(s.label)}</title></polyline>"
        )
    legend = " ".join(
        f'<span style="color:{s.colour}">{"┄" if s.dashed else "━"} {html.escape(s.label)}</span>' for s in series
    )
    return head + "".join(parts) + f'</svg><div class="legend">{legend}</div></figure>'


def _ticks(low: float, high: float, count: int = 6) -> list[float]:
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step) + 1)]


def _log_ticks(low: float, high: float) -> list[float]:
    """log10 of the 1-2-5 values between 10**low and 10**high (a log axis reads in those)."""
    ticks = []
    for exponent in range(math.floor(low), math.ceil(high) + 1):
        for mantissa in (1, 2, 5):
            value = math.log10(mantissa) + exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks or _ticks(low, high)


# ---------------------------------------------------------------- the page


def render_html(run: RunData, *, baseline: RunData | None = None, title: str | None = None) -> str:
    summary = summarize(run)
    reference = summarize(baseline) if baseline is not None else None
    marks = []
    for rollback in summary.rollbacks:
        marks.append((rollback["onset_step"], f"a{rollback['attempt']}: onset {rollback['onset_step']}"))
        marks.append((rollback["checkpoint_step"], f"a{rollback['attempt']}: resumed from {rollback['checkpoint_step']}"))
    marks = [(x, label) for x, label in marks if x is not None]
    bands_by_channel: dict[str, list[tuple[float, float, str]]] = {}
    for channel, start, end in run.corrupt_windows():
        bands_by_channel.setdefault(channel, []).append((start, end, f"{channel}: garbage injected [{start}, {end})"))
    all_bands = [band for bands in bands_by_channel.values() for band in bands]

    sections = [_summary_section(summary, reference)]
    charts = [
        _metric_chart(run, baseline, "loss", "loss (all channels)", marks=marks, bands=all_bands)
    ]
    for channel in run.channels():
        charts.append(
            _metric_chart(
                run, baseline, LOSS_PREFIX + channel, f"loss: {channel}",
                marks=marks, bands=bands_by_channel.get(channel, []),
            )
        )
    sections.append("<h2>Training loss per channel, every attempt</h2>" + "".join(charts))
    ppl_charts = [
        _metric_chart(run, baseline, EVAL_PPL_PREFIX + channel, f"eval perplexity: {channel}", y_label="perplexity (log scale)", marks=marks, log_y=True)
        for channel in run.channels()
    ]
    sections.append("<h2>Eval perplexity per channel</h2>" + "".join(ppl_charts))
    sections.append(_benchmark_section(run.evaluations))
    sections.append(goodput_report.html_section(run.goodput, run.job.get("progress")))
    sections.append(_data_section(run.data))
    sections.append(_events_section(run.events))
    sections.append(_plan_section(run.job))
    heading = title or f"Job {run.job['id']} · {run.job['name']}"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(heading)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(heading)}</h1>" + "".join(sections) + "</body></html>\n"
    )


def _metric_chart(
    run: RunData,
    baseline: RunData | None,
    name: str,
    title: str,
    *,
    y_label: str = "loss",
    marks: Sequence[tuple[float, str]] = (),
    bands: Sequence[tuple[float, float, str]] = (),
    log_y: bool = False,
) -> str:
    series = []
    if baseline is not None:
        for attempt in baseline.attempt_numbers():
            series.append(Series(f"without the fault (job {baseline.job['id']})", baseline.series(name, attempt), BASELINE_COLOUR, dashed=True))
    for attempt in run.attempt_numbers():
        series.append(Series(f"attempt {attempt}", run.series(name, attempt), ATTEMPT_COLOURS[attempt % len(ATTEMPT_COLOURS)]))
    return svg_chart(series, title=title, y_label=y_label, marks=marks, bands=bands, log_y=log_y)


def _benchmark_section(evaluations: list[dict[str, Any]] | None) -> str:
    """Accuracy against step per task (lm-eval on the chosen checkpoints), then every score."""
    if not evaluations:
        return ""
    by_task = benchmark_report.accuracy_by_task(evaluations)
    series = [
        Series(task, points, ATTEMPT_COLOURS[i % len(ATTEMPT_COLOURS)])
        for i, (task, points) in enumerate(by_task.items())
    ]
    chart = svg_chart(series, title="benchmark accuracy (acc) vs step", y_label="accuracy") if series else ""
    return "<h2>Benchmarks per checkpoint</h2>" + chart + benchmark_report.html_table(evaluations)


def _summary_section(summary: Summary, reference: Summary | None) -> str:
    rows = [
        ("state", summary.state),
        ("attempts", str(summary.attempts)),
        ("verdicts", ", ".join(f"{k} × {v}" for k, v in sorted(summary.verdicts.items())) or "none"),
        ("final loss (mean of last steps)", _fmt(summary.final_loss)),
        ("final eval loss", _fmt(summary.final_eval_loss)),
    ]
    for channel, ppl in summary.final_eval_ppl.items():
        rows.append((f"final eval PPL {channel}", _fmt(ppl, ".2f")))
    if reference is not None:
        diff = relative_difference(summary.final_loss, reference.final_loss)
        eval_diff = relative_difference(summary.final_eval_loss, reference.final_eval_loss)
        rows.append(("run without the fault: final loss", f"{_fmt(reference.final_loss)} ({_pct(diff)} here)"))
        rows.append(("run without the fault: final eval loss", f"{_fmt(reference.final_eval_loss)} ({_pct(eval_diff)} here)"))
    for rollback in summary.rollbacks:
        skip = rollback["skip_range_batches"]
        rows.append((
            f"rollback → attempt {rollback['attempt']}",
            f"by {rollback['actor']}: {rollback['why'] or ''}; back to the checkpoint at step "
            f"{rollback['checkpoint_step']}, batches [{skip[0]}, {skip[1]}) skipped" if skip else f"by {rollback['actor']}",
        ))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<h2>Summary</h2><table>{body}</table>"


def _events_section(events: Sequence[dict[str, Any]]) -> str:
    rows = []
    for event in events:
        attempt = "-" if event["attempt"] is None else f"a{event['attempt']}"
        important = event["kind"].startswith(("verdict.", "job.rolled_back", "rollback."))
        rows.append(
            f'<tr{" class=hot" if important else ""}><td>{html.escape(str(event["created_at"]))}</td><td>{attempt}</td>'
            f"<td>{html.escape(event['kind'])}</td><td>{html.escape(event['actor'])}</td>"
            f"<td>{html.escape(event['reason'] or '')}</td></tr>"
        )
    return (
        "<h2>Event log</h2><table><tr><th>time</th><th>attempt</th><th>event</th><th>actor</th><th>why</th></tr>"
        + "".join(rows) + "</table>"
    )


def _data_section(data: dict[str, Any] | None) -> str:
    """Planned against consumed tokens and mix per channel, and the epochs of each source."""
    if not data:
        return ""
    at = f" by step {data['step']} (attempt {data['attempt']})" if data.get("step") is not None else ""
    head = (
        "<tr><th>channel</th><th>planned, whole run</th><th>planned by now</th><th>consumed</th>"
        "<th>planned mix</th><th>realised mix</th><th>epochs consumed</th></tr>"
    )
    rows = []
    for channel in data["channels"]:
        cells = (
            channel["channel"],
            _count(channel["tokens_planned"]),
            _count(channel["tokens_expected"]),
            _count(channel["tokens_consumed"]) if channel["tokens_consumed"] is not None else "not reported",
            _share(channel["share_planned"]),
            _share(channel["share_consumed"]),
            _fmt(channel["epochs_consumed"], ".3f"),
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>")
    sources = []
    for source in (data.get("plan") or {}).get("sources", []):
        epochs = "size unknown" if source["epochs"] is None else f"{source['epochs']:.3f} epochs planned"
        mark = " (over max_source_epochs)" if source["over_limit"] else ""
        sources.append(f"<li>{html.escape(source['path'])}: {_count(source['size_tokens'])} tokens, {html.escape(epochs + mark)}</li>")
    listing = f"<p>Sources over the run:</p><ul>{''.join(sources)}</ul>" if sources else ""
    return (
        f"<h2>Data: planned vs consumed per source{html.escape(at)}</h2>"
        f"<table>{head}{''.join(rows)}</table>{listing}"
    )


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _plan_section(job: dict[str, Any]) -> str:
    plan = job.get("plan") or {}
    derived = job.get("derived") or {}
    rows = []
    if params := plan.get("params"):
        rows.append(("parameters", f"{params.get('total', 0):,} ({params.get('non_embedding', 0):,} non-embedding)"))
    if memory := plan.get("memory"):
        rows.append(("memory per GPU", f"{memory.get('per_gpu_gib', 0):.2f} GiB of {memory.get('capacity_gib', 0):g} GiB"))
    if compute := plan.get("compute"):
        rows.append(("compute", f"{compute.get('flops', 0):.3e} FLOPs"))
    for stage in derived.get("stages", []):
        rows.append((f"stage {stage['stage']}", f"{stage['train_iters']} steps at seq {stage['seq_length']}, {stage['tokens_trained']:,} tokens"))
    for warning in job.get("warnings", []):
        rows.append(("warning", f"{'.'.join(map(str, warning.get('loc', [])))}: {warning.get('msg', '')}"))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<h2>Plan</h2><table>{body}</table>"


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;max-width:820px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
tr.hot{background:#fff3cd}figure{margin:12px 0}figcaption{font-weight:600}.legend{font-size:12px}
"""
