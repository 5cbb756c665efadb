"""`pretrainctl`: talk to the API over HTTP; `pretrainctl.server` adds the commands that run it."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from pretrainctl import server
from pretrainctl.client import ApiClient, ApiError
from pretrainctl.config import ClientSettings
from pretrainctl.output import (
    exit_on_api_error,
    print_data,
    progress_line,
    show_goodput,
    show_job_data,
)

# The server's enums as the wire carries them (tests/pretrainctl check that they agree).
JOB_STATES = ("pending", "queued", "running", "paused", "cancelling", "succeeded", "failed", "cancelled")
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled"})
ROLES = ("viewer", "submitter", "oncall", "admin")


def _settings() -> ClientSettings:
    try:
        return ClientSettings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"bad configuration: {exc}") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", default=None, help="API base URL [PRETRAIN_API_URL].")
@click.option("--token", default=None, help="Bearer token [PRETRAIN_API_TOKEN].")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None) -> None:
    """Submit and follow LLM pretraining jobs, and run the service that runs them."""
    ctx.obj = {"url": url, "token": token}


@contextmanager
def api(ctx: click.Context) -> Iterator[ApiClient]:
    """A client for the API the user pointed at; API errors become a clean exit."""
    settings = _settings()
    url = ctx.obj["url"] or settings.api_url
    client = ApiClient(url, ctx.obj["token"] or settings.token())
    try:
        yield client
    except ApiError as exc:
        exit_on_api_error(exc)
    except Exception as exc:
        if type(exc).__module__.startswith("httpx"):
            raise click.ClickException(f"cannot reach the API at {url}: {exc}") from exc
        raise
    finally:
        client.close()


# --- tokens ------------------------------------------------------------------------------------


@cli.group()
def tokens() -> None:
    """API tokens (admin)."""


@tokens.command("create")
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--name", default=None, help="Holder of the token (default: the role).")
@click.option("--local", is_flag=True, help="Write straight to the database instead of the API (bootstrap).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tokens_create(ctx: click.Context, role: str, name: str | None, local: bool, as_json: bool) -> None:
    """Mint a token; its secret is printed once."""
    name = name or role
    if local:
        created = server.mint_token_locally(name=name, role=role)
    else:
        with api(ctx) as client:
            created = client.create_token(name=name, role=role)
    print_data(created, as_json, lambda c: click.echo(c["token"]))


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tokens_list(ctx: click.Context, as_json: bool) -> None:
    """List tokens, without their secrets."""
    with api(ctx) as client:
        rows = client.list_tokens()

    def human(rows: list[dict[str, Any]]) -> None:
        for t in rows:
            status = "revoked" if t["revoked_at"] else "active"
            click.echo(f"{t['id']:>5}  {t['prefix']}…  {t['role']:<9}  {status:<7}  {t['name']}")

    print_data(rows, as_json, human)


@tokens.command("revoke")
@click.argument("token_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tokens_revoke(ctx: click.Context, token_id: int, as_json: bool) -> None:
    """Revoke a token by id."""
    with api(ctx) as client:
        revoked = client.revoke_token(token_id)
    print_data(revoked, as_json, lambda _: click.echo(f"token {token_id} revoked"))


# --- jobs --------------------------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.File("r"))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def submit(ctx: click.Context, file, as_json: bool) -> None:
    """Submit the job spec in FILE (YAML or JSON; `-` for stdin)."""
    text = file.read()
    with api(ctx) as client:
        job = client.submit(text, yaml=not file.name.endswith(".json"))

    def human(job: dict[str, Any]) -> None:
        click.echo(f"job {job['id']} ({job['name']}) submitted: {job['state']}")
        for warning in job["warnings"]:
            click.echo(f"  warning: {'.'.join(map(str, warning['loc']))}: {warning['msg']}")

    print_data(job, as_json, human)


@cli.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def get(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """Show one job."""
    with api(ctx) as client:
        job = client.get_job(job_id)
    print_data(job, as_json, _show_job)


def _show_job(job: dict[str, Any]) -> None:
    derived = job["derived"]
    click.echo(f"job {job['id']}  {job['name']}  ({job['kind']})")
    click.echo(f"  state      {job['state']} (desired {job['desired_state']})" + (f": {job['state_reason']}" if job["state_reason"] else ""))
    click.echo(f"  owner      {job['owner']}")
    click.echo(f"  submitted  {job['created_at']}")
    if "world_size" in derived:
        click.echo(f"  layout     world {derived['world_size']}, data parallel {derived.get('data_parallel')}")
    for stage in derived.get("stages", []):
        click.echo(f"  stage      {stage.get('stage')}: {stage.get('train_iters')} iters at seq {stage.get('seq_length')}")
    if plan := job.get("plan"):
        memory, compute = plan["memory"], plan["compute"]
        click.echo(f"  plan       {plan['params']['total']:,} params, {memory['per_gpu_gib']:.1f} of {memory['capacity_gib']:.0f} GiB per GPU, {compute['gpu_hours']:,.0f} GPU-hours, {compute['days']:.1f} days")
    if result := job.get("result"):
        click.echo(f"  result     {result['path']}")
        layout = (result.get("report") or {}).get("layout") or {}
        if {"vocab_size", "padded_vocab_size"} <= set(layout):
            click.echo(f"  vocabulary {layout['vocab_size']:,} ids, padded to {layout['padded_vocab_size']:,}")
        report = result.get("report") or {}
        if {"documents", "tokens", "tokenizer"} <= set(report):  # a data job's sidecar
            click.echo(f"  prepared   {report['documents']:,} documents, {report['tokens']:,} tokens ({report.get('dtype')}) with tokenizer {report['tokenizer']}")
    if progress := job.get("progress"):
        click.echo(f"  progress   {progress_line(progress)}")
    for attempt in job["attempts"]:
        click.echo(f"  attempt {attempt['number']}  {attempt['state']:<10} {attempt['reason']}")
    for warning in job["warnings"]:
        click.echo(f"  warning    {'.'.join(map(str, warning['loc']))}: {warning['msg']}")


@cli.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def data(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """Tokens per data channel: planned, expected by the newest step, consumed, and the mixes."""
    with api(ctx) as client:
        account = client.job_data(job_id)
    print_data(account, as_json, show_job_data)


@cli.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def goodput(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """Where the job's wall time went: productive, lost, checkpoint, startup, queued, stalled, other."""
    with api(ctx) as client:
        result = client.goodput(job_id)
    print_data(result, as_json, show_goodput)


@cli.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(JOB_STATES))
@click.option("--owner", default=None)
@click.option("--name", default=None, help="Only jobs with this name.")
@click.option("--limit", type=int, default=None, help="Page size.")
@click.option("--cursor", type=int, default=None, help="`next_cursor` from the previous page.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, states: tuple[str, ...], owner: str | None, name: str | None, limit: int | None, cursor: int | None, as_json: bool) -> None:
    """List jobs, newest first."""
    with api(ctx) as client:
        page = client.list_jobs(state=list(states) or None, owner=owner, name=name, limit=limit, cursor=cursor)

    def human(page: dict[str, Any]) -> None:
        click.echo(f"{'ID':>6}  {'NAME':<32} {'STATE':<10} {'OWNER':<16} SUBMITTED")
        for job in page["data"]:
            # A queued job says what it waits for (the queue's reason); other reasons are `get`'s.
            waits = f"  {job['state_reason']}" if job["state"] == "queued" and job.get("state_reason") else ""
            click.echo(f"{job['id']:>6}  {job['name']:<32} {job['state']:<10} {job['owner']:<16} {job['created_at']}{waits}")
        more = f"; next page: --cursor {page['next_cursor']}" if page["next_cursor"] else ""
        click.echo(f"{len(page['data'])} of {page['count']} jobs{more}")

    print_data(page, as_json, human)


@cli.command()
@click.argument("job_id", type=int)
@click.option("--reason", default=None, help="Why, for the audit log.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cancel(ctx: click.Context, job_id: int, reason: str | None, as_json: bool) -> None:
    """Cancel a job."""
    with api(ctx) as client:
        job = client.cancel(job_id, reason)
    print_data(job, as_json, lambda j: click.echo(f"job {j['id']} {j['state']}"))


@cli.command()
@click.argument("job_id", type=int)
@click.option("--reason", default=None, help="Why, for the audit log.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pause(ctx: click.Context, job_id: int, reason: str | None, as_json: bool) -> None:
    """Stop a job's workload and keep the job (on-call); `resume` continues it."""
    with api(ctx) as client:
        job = client.pause(job_id, reason)
    print_data(job, as_json, lambda j: click.echo(f"job {j['id']} {j['state']} (desired {j['desired_state']})"))


@cli.command()
@click.argument("job_id", type=int)
@click.option("--reason", default=None, help="Why, for the audit log.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def resume(ctx: click.Context, job_id: int, reason: str | None, as_json: bool) -> None:
    """Resume a paused job from its newest good checkpoint, as a new attempt (on-call)."""
    with api(ctx) as client:
        job = client.resume(job_id, reason)
    print_data(job, as_json, lambda j: click.echo(f"job {j['id']} {j['state']}: attempt {j['attempts'][-1]['number']}"))


@cli.command()
@click.argument("job_id", type=int)
@click.option("--after", type=int, default=None, help="Only events after this id.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the job finishes (or Ctrl-C).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True, help="Seconds between polls with --follow.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list; with --follow, one JSON object a line.")
@click.pass_context
def events(ctx: click.Context, job_id: int, after: int | None, follow: bool, interval: float, as_json: bool) -> None:
    """Print a job's audit log, oldest first (every page)."""
    with api(ctx) as client:
        if not follow:
            rows = _events_after(client, job_id, after)
            print_data(rows, as_json, lambda rows: [_show_event(e) for e in rows])
            return
        with contextlib.suppress(KeyboardInterrupt):
            _follow_events(client, job_id, after, interval, as_json)


def _events_after(client: ApiClient, job_id: int, after: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        page = client.events(job_id, after=after)
        rows.extend(page["data"])
        if page["next_cursor"] is None:
            return rows
        after = page["next_cursor"]


def _follow_events(client: ApiClient, job_id: int, after: int | None, interval: float, as_json: bool) -> None:
    """Print events as they land until the job finishes. The state is read before the events,
    so the events that finished it are printed before this stops."""
    import time

    while True:
        finished = client.get_job(job_id)["state"] in FINISHED_STATES
        for event in _events_after(client, job_id, after):
            after = event["id"]
            if as_json:
                click.echo(json.dumps(event, sort_keys=True))
            else:
                _show_event(event)
        if finished:
            return
        time.sleep(interval)


def _show_event(e: dict[str, Any]) -> None:
    attempt = f"a{e['attempt']}" if e["attempt"] is not None else "-"
    why = f"  ({e['reason']})" if e["reason"] else ""
    click.echo(f"{e['created_at']}  {attempt:<4} {e['kind']:<22} {e['actor']}{why}")


@cli.command()
@click.argument("job_id", type=int)
@click.option("--attempt", type=click.IntRange(min=0), default=None, help="Default: the current attempt.")
@click.option("--tail", type=click.IntRange(min=1), default=None, help="Only the last this many lines.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def logs(ctx: click.Context, job_id: int, attempt: int | None, tail: int | None, as_json: bool) -> None:
    """Print the log of a job's attempt (the trainer's, or a tokenizer or data job's)."""
    with api(ctx) as client:
        found = client.logs(job_id, attempt=attempt, tail=tail)
    print_data(found, as_json, lambda f: click.echo(f["text"], nl=not f["text"].endswith("\n")))


@cli.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def checkpoints(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """List a job's registered checkpoints."""
    with api(ctx) as client:
        rows = client.checkpoints(job_id)

    def human(rows: list[dict[str, Any]]) -> None:
        for c in rows:
            state = "good" if c["verified"] and c["usable"] else "unusable"
            click.echo(f"  a{c['attempt']:<3} step {c['step']:>8}  {c['tokens']:>14,} tokens  {state:<8} {c['path']}")

    print_data(rows, as_json, human)


@cli.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def evaluations(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """List a job's benchmark scores per checkpoint step and task (lm-eval)."""
    with api(ctx) as client:
        rows = client.evaluations(job_id)

    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no evaluations (none chosen yet, or the spec has no evaluation.benchmarks)")
        for e in rows:
            scores = f"acc {_number(e['acc'])}  acc_norm {_number(e['acc_norm'])}  nll {_number(e['nll'])}"
            tail = scores if e["state"] == "succeeded" else (e["error"] or "")
            click.echo(f"  step {e['step']:>8}  {e['task']:<24} {e['state']:<9}  {tail}")

    print_data(rows, as_json, human)


@cli.command()
@click.argument("job_id", type=int)
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line: {event}, {step, metrics}, then {job, state}.")
@click.pass_context
def follow(ctx: click.Context, job_id: int, interval: float, as_json: bool) -> None:
    """Follow a job live: per-channel loss as steps land, and every event, until it ends."""
    import time

    def say(line: dict[str, Any], human: str) -> None:
        click.echo(json.dumps(line, sort_keys=True) if as_json else human)

    after_event, next_step = None, 0
    with api(ctx) as client:
        while True:
            job = client.get_job(job_id)
            for event in client.events(job_id, after=after_event)["data"]:
                after_event = event["id"]
                attempt = f"a{event['attempt']}" if event["attempt"] is not None else "-"
                why = f": {event['reason']}" if event["reason"] else ""
                say({"event": event}, f"  event  {attempt:<4} {event['kind']}{why}")
            points = client.metrics(job_id, min_step=next_step, attempt=job["attempts"][-1]["number"])
            by_step: dict[int, dict[str, Any]] = {}
            for point in points:
                by_step.setdefault(point["step"], {})[point["name"]] = point["value"] if point["value"] is not None else point["nonfinite"]
            for step in sorted(by_step):
                values = by_step[step]
                if "prep/tokens" in values:  # a data job's progress: step is input bytes done
                    total = values.get("prep/bytes_total") or 0
                    share = f" ({100 * step / total:.0f}%)" if total else ""
                    say({"step": step, "metrics": values}, f"bytes {step:>12,}{share}  documents {values.get('prep/documents', 0):,.0f}  tokens {values['prep/tokens']:,.0f}  {values.get('prep/tokens_per_s', 0):,.0f} tokens/s")
                    next_step = step + 1
                    continue
                if "loss" not in values:
                    continue
                channels = "  ".join(
                    f"{name.split('/', 1)[1]} {_number(v)}" for name, v in sorted(values.items()) if name.startswith("loss/")
                )
                say({"step": step, "metrics": values}, f"step {step:>6}  loss {_number(values['loss'])}  {channels}  lr {_number(values.get('lr'), '.2e')}")
                next_step = step + 1
            if job["state"] in (*FINISHED_STATES, "paused"):
                reason = f": {job['state_reason']}" if job["state_reason"] else ""
                say({"job": job_id, "state": job["state"], "reason": job["state_reason"]}, f"job {job_id} {job['state']}{reason}")
                sys.exit(0 if job["state"] == "succeeded" else 1)
            time.sleep(interval)


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-out", show_default=True)
@click.option("--spec", "spec_path", type=click.Path(exists=True, dir_okay=False), default=None, help="Default: examples/demo.yaml.")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="Also train the spec without its fault, for comparison.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=900, show_default=True, help="Seconds each job may take.")
def demo(out_dir: str, spec_path: str | None, baseline: bool, timeout_s: float) -> None:
    """The whole loop on this machine: a spike caught, a run rolled back and finished, a report."""
    from pretrainctl import demo as demo_run

    try:
        result = demo_run.run(
            out_dir=Path(out_dir),
            spec_path=Path(spec_path) if spec_path else demo_run.DEMO_SPEC,
            baseline=baseline,
            timeout_s=timeout_s,
            echo=click.echo,
        )
    except ApiError as exc:  # the demo's own service refused the spec: say why, cleanly
        exit_on_api_error(exc)
    sys.exit(0 if result.ok else 1)


@cli.command()
@click.argument("job_id", type=int)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Default: job-<id>-report.html.")
@click.option("--baseline", "baseline_id", type=int, default=None, help="Another job to draw beside it (grey, dashed).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def report(ctx: click.Context, job_id: int, out_path: str | None, baseline_id: int | None, as_json: bool) -> None:
    """Write a job's report: loss per channel across attempts, eval PPL, events, plan (HTML)."""
    from pretrainctl import run_report

    with api(ctx) as client:
        run = run_report.collect(client, job_id)
        baseline = run_report.collect(client, baseline_id) if baseline_id is not None else None
    path = Path(out_path or f"job-{job_id}-report.html")
    path.write_text(run_report.render_html(run, baseline=baseline))
    print_data({"job": job_id, "path": str(path)}, as_json, lambda r: click.echo(r["path"]))


def _number(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, int | float) else str(value)


@cli.command()
@click.argument("job_id", type=int)
@click.option("--reason", required=True, help="Why, for the audit log.")
@click.option("--to-step", type=click.IntRange(min=0), default=None, help="Newest good checkpoint at or before this step.")
@click.option("--skip-steps", type=click.IntRange(min=0), default=None, help="Steps of data to skip after it.")
@click.option("--lr-scale", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rollback(ctx: click.Context, job_id: int, reason: str, to_step: int | None, skip_steps: int | None, lr_scale: float | None, as_json: bool) -> None:
    """Roll a job back to a good checkpoint and resume it, skipping bad data (on-call)."""
    with api(ctx) as client:
        result = client.rollback(job_id, reason=reason, to_step=to_step, skip_steps=skip_steps, lr_scale=lr_scale)

    def human(result: dict[str, Any]) -> None:
        if result["paused"]:
            click.echo(f"job {job_id} paused: too many rollbacks; it needs a person")
            return
        checkpoint = result["checkpoint"]
        click.echo(f"job {job_id}: attempt {result['attempt']} resumes from step {checkpoint['step']} ({checkpoint['path']})")
        click.echo(f"  skips batches [{result['skip_range'][0]}, {result['skip_range'][1]})")

    print_data(result, as_json, human)


@cli.group()
def scaling() -> None:
    """Scaling laws fitted from small runs, as plans then predict with."""


@scaling.command("fit")
@click.argument("runs_csv", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="The API's answer: {optimal_tokens, groups, benchmark, ...}.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Draw the fit into this PNG.")
@click.option("--save", is_flag=True, help="Store the fit as the install's law; `plan` then predicts with it.")
@click.option("--task", default=None, help="Over finished jobs: the benchmark task whose scores feed the benchmark predictor (default: their only one).")
@click.pass_context
def scaling_fit(ctx: click.Context, runs_csv: Path | None, as_json: bool, plot_path: Path | None, save: bool, task: str | None) -> None:
    """Fit N*(C) = A·C^alpha over RUNS_CSV (params,tokens,flops,loss[,nll,accuracy]), or over
    this install's finished jobs without it."""
    from pretrainctl.scaling import read_runs, refusal_lines, show_fit

    if task is not None and runs_csv is not None:
        raise click.UsageError("--task picks finished jobs' benchmark scores; a CSV carries its own nll,accuracy")
    rows = read_runs(runs_csv) if runs_csv is not None else None
    with api(ctx) as client:
        try:
            fit = client.scaling_fit(runs=[r.run for r in rows] if rows is not None else None, save=save, task=task)
        except ApiError as exc:
            if exc.status_code != 422:
                raise
            click.echo("error (422): the runs cannot be fitted:", err=True)
            for line in refusal_lines(exc, rows, runs_csv):
                click.echo(f"  - {line}", err=True)
            sys.exit(2)
    print_data(fit, as_json, show_fit)
    if plot_path is not None:
        from pretrainctl.scaling_plot import draw

        draw(fit, plot_path)
        if not as_json:
            click.echo(f"plot         {plot_path}")


@cli.group()
def watchdog() -> None:
    """The loss-anomaly detector the service runs."""


for command in server.COMMANDS:
    cli.add_command(command)
for command in server.WATCHDOG_COMMANDS:
    watchdog.add_command(command)


def main() -> None:
    cli(prog_name="pretrainctl")


if __name__ == "__main__":
    main()
