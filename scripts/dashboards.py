"""Grafana dashboards as code: `make dashboards` writes them into the Helm chart.

Four dashboards over what `GET /metrics` exports (service/observability.py): channel loss,
eval perplexity, throughput and the fleet. Each reads a Prometheus data source picked in a
`datasource` variable; per-job panels filter on the exporter's `job_id` label through a
`job` variable (shown by job name). Every API replica exports the same series computed from
the database, so the queries take `max` across replicas (a `sum` would count each job once per
replica); only `pretrain_ingested_points_total` is counted per process, and summed. The chart turns every
`helm/pretrain-orchestrator/dashboards/*.json` into a ConfigMap for Grafana's sidecar, and
tests/dashboards checks the files against this generator and every query against a real
Prometheus.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    prometheus,
    timeseries,
    xychart,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    GraphDrawStyle,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
)
from grafana_foundation_sdk.models.xychart import SeriesMapping, XYShowMode

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "helm" / "pretrain-orchestrator" / "dashboards"
TAG = "pretrain-orchestrator"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Grafana shows the job's name and substitutes its id: query_result renders each series as
# `{job_id="7", name="tiny-cpu"} 160 1700000000000` (labels sorted), the regex splits it.
JOB_VALUES = "query_result(max by (job_id, name) (max_over_time(pretrain_step[$__range])))"
JOB_REGEX = '/job_id="(?<value>[^"]+)".*name="(?<text>[^"]+)"/'
LIVE = 'job_id=~"$job"'
# A query's series drawn dashed: what was planned, beside what happened.
DASHED = [model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})]


def per_job(metric: str, *labels: str, where: str = "") -> str:
    """The series of the picked jobs, one per job (and per `labels`) whatever the replicas."""
    selector = f"{metric}{{{LIVE}{', ' + where if where else ''}}}"
    return f"max by ({', '.join(['job_id', 'name', *labels])}) ({selector})"


def share(metric: str) -> str:
    """Each channel's share of a per-channel total, per job: the mix."""
    channels = per_job(metric, "channel")
    return f"{channels} / ignoring (channel) group_left sum by (job_id, name) ({channels})"


def increases(counter: str, *labels: str, matchers: str = "") -> str:
    """How much a per-job counter rose in each interval, per job (and per `labels`)."""
    selector = f"{counter}{{{matchers}}}" if matchers else counter
    return f"max by ({', '.join(['job_id', 'name', *labels])}) (increase({selector}[$__rate_interval]))"


class _PrometheusAnnotationQuery(model.AnnotationQuery):
    """The SDK's annotation query plus the fields Grafana's Prometheus data source reads."""

    def __init__(self) -> None:
        super().__init__(datasource=DATASOURCE, enable=True)
        self.title_format = ""
        self.text_format = ""
        self.tag_keys = ""

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(
            titleFormat=self.title_format, textFormat=self.text_format, tagKeys=self.tag_keys, useValueForTime=False
        )
        return payload


class PrometheusAnnotation(dashboard.AnnotationQuery):
    """A marker wherever a PromQL expression has a value (an increase of a counter, say)."""

    def __init__(self, name: str, expr: str) -> None:
        self._internal = _PrometheusAnnotationQuery()
        self.name(name).expr(expr)

    def title_format(self, title_format: str) -> PrometheusAnnotation:
        self._internal.title_format = title_format
        return self

    def text_format(self, text_format: str) -> PrometheusAnnotation:
        self._internal.text_format = text_format
        return self

    def tag_keys(self, *labels: str) -> PrometheusAnnotation:
        self._internal.tag_keys = ",".join(labels)
        return self


# --- pieces ---------------------------------------------------------------------------------------


def query(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id)


def by_name(field: str) -> xychart.MatcherConfig:
    return xychart.MatcherConfig().id("byName").options(field)


def datasource_variable() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def job_variable() -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable("job")
        .label("Job")
        .description("Live jobs in the time range, by name.")
        .datasource(DATASOURCE)
        .query(JOB_VALUES)
        .regex(JOB_REGEX)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .multi(True)
        .include_all(True)
    )


def channel_variable(metric: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable("channel")
        .label("Channel")
        .description("Data channels; `all` is the whole mixture.")
        .datasource(DATASOURCE)
        .query(f"label_values({metric}{{{LIVE}}}, channel)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .multi(True)
        .include_all(True)
    )


def verdict_annotations() -> list[PrometheusAnnotation]:
    """Markers where the watchdog judged a job, and where a job was rolled back."""
    verdicts = (
        PrometheusAnnotation(
            "Verdicts",
            f"{increases('pretrain_verdicts_total', 'kind', matchers=LIVE)} > 0",
        )
        .icon_color("red")
        .title_format("{{kind}} verdict")
        .text_format("job {{name}} ({{job_id}})")
        .tag_keys("name", "kind")
    )
    rollbacks = (
        PrometheusAnnotation(
            "Rollbacks",
            f"{increases('pretrain_rollbacks_total', 'trigger', matchers=LIVE)} > 0",
        )
        .icon_color("orange")
        .title_format("rollback ({{trigger}})")
        .text_format("job {{name}} ({{job_id}})")
        .tag_keys("name", "trigger")
    )
    return [verdicts, rollbacks]


def line_panel(title: str, description: str, *targets: prometheus.Dataquery, unit: str = "none") -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit).span(12).height(9)
    panel.legend(
        common.VizLegendOptions()
        .display_mode(LegendDisplayMode.TABLE)
        .placement(LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["lastNotNull", "min", "max"])
    )
    for target in targets:
        panel.with_target(target)
    return panel


def bar_panel(title: str, description: str, *targets: prometheus.Dataquery) -> timeseries.Panel:
    return (
        line_panel(title, description, *targets)
        .draw_style(GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(common.StackingConfig().mode(StackingMode.NORMAL))
    )


def new_dashboard(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard.DashboardLink("Pretraining")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(datasource_variable())
    )


def _numbered(board: dashboard.Dashboard, panels: list) -> dashboard.Dashboard:
    for number, panel in enumerate(panels, start=1):
        board.with_panel(panel.id(number))
    return board


# --- the dashboards -------------------------------------------------------------------------------


def channel_loss() -> dashboard.Dashboard:
    board = (
        new_dashboard(
            "pretrain-channel-loss",
            "Pretraining / Channel loss",
            "Training loss of every data channel of live jobs, with the watchdog's verdicts and rollbacks.",
        )
        .with_variable(job_variable())
        .with_variable(channel_variable("pretrain_loss"))
    )
    for annotation in verdict_annotations():
        board.annotation(annotation)
    loss = per_job("pretrain_loss", "channel", where='channel=~"$channel"')
    tokens = per_job("pretrain_tokens")
    loss_over_tokens = (
        xychart.Panel()
        .title("Loss over tokens: ${job:text}")
        .description("Loss by channel against tokens trained on (one panel per job); a rollback steps back along x.")
        .datasource(DATASOURCE)
        .span(12)
        .height(9)
        .repeat("job")
        .max_per_row(2)
        .with_target(query(tokens, "tokens", "A"))
        .with_target(query(loss, "{{channel}}", "B"))
        # One frame with a row per scrape: tokens and every channel's loss side by side.
        .with_transformation(
            model.DataTransformerConfig(id_val="joinByField", options={"byField": "Time", "mode": "outer"})
        )
        .mapping(SeriesMapping.AUTO)
        .series([xychart.XYSeriesConfig().x(xychart.XychartXYSeriesConfigX().matcher(by_name("tokens")))])
        .show(XYShowMode.LINES)
        .unit("none")
    )
    return _numbered(
        board,
        [
            line_panel(
                "Loss by channel",
                "Latest training loss each job reported, per channel (`all` is the whole mixture).",
                query(loss, "{{name}} · {{channel}}"),
            ).span(24),
            loss_over_tokens,
            line_panel(
                "Tokens seen",
                "Tokens each job had trained on at its newest report; it falls back after a rollback.",
                query(tokens, "{{name}}"),
                unit="short",
            ),
            line_panel(
                "Gradient norm",
                "Global gradient norm before clipping; spikes often lead loss spikes.",
                query(per_job("pretrain_train_metric", where='metric="grad_norm"'), "{{name}}"),
            ),
        ],
    )


def perplexity() -> dashboard.Dashboard:
    board = (
        new_dashboard(
            "pretrain-perplexity",
            "Pretraining / Eval perplexity",
            "Held-out perplexity of every data channel of live jobs, and their benchmark scores.",
        )
        .with_variable(job_variable())
        .with_variable(channel_variable("pretrain_eval_ppl"))
    )
    for annotation in verdict_annotations():
        board.annotation(annotation)
    ppl = per_job("pretrain_eval_ppl", "channel", where='channel=~"$channel"')
    latest = (
        bargauge.Panel()
        .title("Latest eval perplexity")
        .description("The newest evaluation of each channel.")
        .datasource(DATASOURCE)
        .span(24)
        .height(8)
        .with_target(query(ppl, "{{name}} · {{channel}}").instant())
        .display_mode(BarGaugeDisplayMode.BASIC)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .min(1)
        .unit("none")
    )
    accuracy = per_job("pretrain_benchmark_accuracy", "task", where='metric="acc"')
    benchmark_vs_step = (
        xychart.Panel()
        .title("Benchmark vs step: ${job:text}")
        .description(
            "Accuracy on each benchmark (lm-eval, acc) against the checkpoint step it scored, "
            "one point per evaluation (one panel per job)."
        )
        .datasource(DATASOURCE)
        .span(12)
        .height(9)
        .repeat("job")
        .max_per_row(2)
        .with_target(query(f"max by (job_id, name) (pretrain_benchmark_step{{{LIVE}}})", "step", "A"))
        .with_target(query(accuracy, "{{task}}", "B"))
        # One frame with a row per scrape: the newest step scored and every task's accuracy.
        .with_transformation(
            model.DataTransformerConfig(id_val="joinByField", options={"byField": "Time", "mode": "outer"})
        )
        .mapping(SeriesMapping.AUTO)
        .series([xychart.XYSeriesConfig().x(xychart.XychartXYSeriesConfigX().matcher(by_name("step")))])
        .show(XYShowMode.POINTS_AND_LINES)
        .unit("percentunit")
    )
    return _numbered(
        board,
        [
            line_panel(
                "Eval perplexity by channel",
                "Perplexity on each channel's held-out split (`all` is the mixture).",
                query(ppl, "{{name}} · {{channel}}"),
            ).span(24),
            latest,
            benchmark_vs_step,
            line_panel(
                "Benchmark NLL",
                "Mean negative log-likelihood of the right option at the newest scored checkpoint.",
                query(per_job("pretrain_benchmark_nll", "task"), "{{name}} · {{task}}"),
            ),
        ],
    )


def throughput() -> dashboard.Dashboard:
    board = new_dashboard(
        "pretrain-throughput",
        "Pretraining / Throughput",
        "How fast live jobs train and how far they are: tokens per second, model FLOPs utilisation, step time, "
        "progress and ETA, and goodput (where the wall time went).",
    ).with_variable(job_variable())

    def train_metric(name: str) -> prometheus.Dataquery:
        return query(per_job("pretrain_train_metric", where=f'metric="{name}"'), "{{name}}")

    return _numbered(
        board,
        [
            line_panel(
                "Tokens per second",
                "Tokens trained per second of the newest step, whole job.",
                train_metric("throughput/tokens_per_s"),
                unit="short",
            ),
            line_panel(
                "Model FLOPs utilisation",
                "Achieved model FLOPs over the GPUs' peak (needs `train.peak_tflops`).",
                train_metric("throughput/mfu"),
                unit="percentunit",
            ).min(0),
            line_panel(
                "Step time", "Wall time of the newest optimizer step.", train_metric("throughput/step_time_s"), unit="s"
            ),
            line_panel(
                "Progress",
                "Steps trained over all the job's steps (falls back with a rollback); dashed: seconds left at the "
                "newest step time (right axis).",
                query(per_job("pretrain_progress_ratio"), "{{name}}", "A"),
                query(per_job("pretrain_eta_seconds"), "{{name}} ETA", "B"),
                unit="percentunit",
            )
            .min(0)
            .override_by_query("B", [*DASHED, model.DynamicConfigValue(id_val="unit", value="s"),
                                     model.DynamicConfigValue(id_val="custom.axisPlacement", value="right")]),  # fmt: skip
            line_panel(
                "Goodput: where the wall time went",
                "Each job's wall time so far by category (stacked): productive training, lost (work redone after "
                "rollbacks, pod failures, preemptions and stalls), checkpoint save and load, stalled, queued, "
                "startup, other. `pretrainctl goodput JOB` has the same split.",
                query(per_job("pretrain_goodput_seconds", "category"), "{{name}} · {{category}}"),
                unit="s",
            )
            .fill_opacity(60)
            .stacking(common.StackingConfig().mode(StackingMode.NORMAL)),
            line_panel(
                "Goodput",
                "Productive share of each job's wall time so far: training whose work is in the model.",
                query(per_job("pretrain_goodput_ratio"), "{{name}}"),
                unit="percentunit",
            )
            .min(0)
            .max(1),
            line_panel(
                "Tokens seen",
                "Tokens each job had trained on at its newest report.",
                query(per_job("pretrain_tokens"), "{{name}}"),
                unit="short",
            ),
            line_panel(
                "Tokens consumed per source",
                "Tokens each data channel has fed the job (the trainer's `data/tokens/<channel>`), dashed: what "
                "the plan takes from it by the same step. `GET /v1/jobs/{id}/data` has the sizes and epochs.",
                query(per_job("pretrain_data_tokens", "channel"), "{{name}} · {{channel}}", "A"),
                query(per_job("pretrain_data_tokens_planned", "channel"), "{{name}} · {{channel}} planned", "B"),
                unit="short",
            ).override_by_query("B", DASHED),
            line_panel(
                "Planned vs realised mix",
                "Each channel's share of the tokens consumed so far, against its share of what the plan takes "
                "by the same step (dashed); they part when a source runs short or the sampler drifts.",
                query(share("pretrain_data_tokens"), "{{name}} · {{channel}}", "A"),
                query(share("pretrain_data_tokens_planned"), "{{name}} · {{channel}} planned", "B"),
                unit="percentunit",
            )
            .min(0)
            .override_by_query("B", DASHED),
        ],
    )


def fleet() -> dashboard.Dashboard:
    board = new_dashboard(
        "pretrain-fleet",
        "Pretraining / Fleet",
        "All jobs at once: states, attempts, rollbacks, verdicts and the metric pipeline.",
    )
    return _numbered(
        board,
        [
            bar_panel("Jobs by state", "Jobs the service knows, by state.", query("max by (state) (pretrain_jobs)", "{{state}}")),
            bar_panel(
                "Attempts by reason", "Attempts ever opened, by why.", query("max by (reason) (pretrain_attempts)", "{{reason}}")
            ),
            bar_panel(
                "Rollbacks",
                "Rollbacks of live jobs, by trigger (the watchdog or on-call).",
                query(f"sum by (trigger) ({increases('pretrain_rollbacks_total', 'trigger')})", "{{trigger}}"),
            ),
            bar_panel(
                "Verdicts",
                "Watchdog verdicts on live jobs, by kind.",
                query(f"sum by (kind) ({increases('pretrain_verdicts_total', 'kind')})", "{{kind}}"),
            ),
            line_panel(
                "Ingest lag",
                "Seconds since each live job's newest metric point arrived.",
                query("max by (job_id, name) (pretrain_ingest_lag_seconds)", "{{name}}"),
                unit="s",
            ),
            line_panel(
                "Ingested points per second",
                "Metric points the API replicas receive from trainers.",
                query("sum(rate(pretrain_ingested_points_total[$__rate_interval]))", "points/s"),
                unit="short",
            ),
        ],
    )


def build_dashboards() -> dict[str, dict]:
    """Every dashboard as Grafana's JSON model, by uid."""
    built = {}
    for make in (channel_loss, perplexity, throughput, fleet):
        model_json = json.loads(json.dumps(make().build(), cls=JSONEncoder))
        built[model_json["uid"]] = model_json
    return built


def render(dashboard_json: dict) -> str:
    """The file text: stable key order and indentation, so a diff shows only real changes."""
    return json.dumps(dashboard_json, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    dashboards = build_dashboards()
    for stale in OUT_DIR.glob("*.json"):
        if stale.stem not in dashboards:
            stale.unlink()
            print(f"removed {stale.relative_to(ROOT)}")
    for uid, dashboard_json in sorted(dashboards.items()):
        path = OUT_DIR / f"{uid}.json"
        path.write_text(render(dashboard_json))
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
