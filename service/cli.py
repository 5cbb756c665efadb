"""`pretrainctl`: run the service, manage its database, and talk to its API."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from service.client import ApiClient, ApiError
from service.db.models import JobState, Role
from service.settings import Settings, get_settings
from service.tokens import new_token_value


def _settings() -> Settings:
    try:
        return get_settings()
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
    token = ctx.obj["token"] or (settings.api_token.get_secret_value() if settings.api_token else None)
    if token is None and settings.environment == "development":
        generated = settings.generated_admin_token_path
        token = generated.read_text().strip() if generated.exists() else None
    client = ApiClient(url, token)
    try:
        yield client
    except ApiError as exc:
        _exit_on_api_error(exc)
    except Exception as exc:
        if type(exc).__module__.startswith("httpx"):
            raise click.ClickException(f"cannot reach the API at {url}: {exc}") from exc
        raise
    finally:
        client.close()


def _exit_on_api_error(exc: ApiError) -> None:
    """Print what the API refused, one problem a line, and exit 2 for a 422, else 1."""
    lines = exc.lines()
    click.echo(f"error ({exc.status_code}): {lines[0] if len(lines) == 1 else 'the spec was refused:'}", err=True)
    if len(lines) > 1:
        for line in lines:
            click.echo(f"  - {line}", err=True)
    sys.exit(2 if exc.status_code == 422 else 1)


def _refused(exc) -> None:
    """Print every problem of a refused spec, one per line, and exit 2 (as the API's 422)."""
    click.echo("error: the spec was refused:", err=True)
    for problem in exc.problems:
        click.echo(f"  - {'.'.join(map(str, problem.loc)) or 'body'}: {problem.msg}", err=True)
    sys.exit(2)


def _print(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        human(data)


# --- service -----------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default=None, help="Bind address [PRETRAIN_API_HOST].")
@click.option("--port", type=int, default=None, help="Port [PRETRAIN_API_PORT].")
def serve(host: str | None, port: int | None) -> None:
    """Run the API. On the embedded default it migrates its SQLite file first."""
    import uvicorn

    from service.api.app import create_app
    from service.db import migrate

    settings = _settings()
    host, port = host or settings.api_host, port or settings.api_port
    if settings.is_embedded:
        migrate.upgrade(settings)
    if settings.admin_token is None and settings.environment == "development":
        path = _ensure_generated_admin_token(settings)
        click.echo(f"no PRETRAIN_ADMIN_TOKEN set: the admin token is in {path}", err=True)
    stop = None
    if settings.is_embedded and settings.backend == "local":
        from service.controller.loop import start_in_background

        if "ingest_url" not in settings.model_fields_set:  # trainers report to this very server
            settings = settings.model_copy(update={"ingest_url": f"http://{host}:{port}"})
        _, stop, _ = start_in_background(settings)
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level)
    finally:
        if stop is not None:
            stop.set()


@cli.command()
def controller() -> None:
    """Run the controller loop (cluster mode; `serve` runs one itself on the embedded default)."""
    import logging
    import signal
    import threading

    from service.controller.loop import Controller, backend_for
    from service.db.session import get_sessionmaker

    settings = _settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    backend = backend_for(settings)
    loop = Controller(settings, backend, get_sessionmaker(settings.resolved_database_url))
    if hasattr(backend, "start_watch"):  # informer: changes in the cluster wake their job at once
        backend.start_watch(loop.notify)
    click.echo(f"controller: {settings.backend} backend, namespace {settings.namespace}", err=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            loop.run(stop)
    finally:
        if hasattr(backend, "stop_watch"):
            backend.stop_watch()


@cli.command()
@click.option("--concurrency", type=click.IntRange(min=1), default=2, show_default=True)
def worker(concurrency: int) -> None:
    """Run a Celery worker for the asynchronous actions (needs PRETRAIN_REDIS_URL)."""
    from service.tasks import make_app

    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException("PRETRAIN_REDIS_URL is not set: without Redis the tasks run in-process")
    make_app(settings).worker_main(["worker", "--loglevel=INFO", f"--concurrency={concurrency}"])


@cli.command()
@click.argument("file", type=click.File("r"))
@click.option("--attempt", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--resume-from", default=None, help="Checkpoint path the attempt resumes from.")
def render(file, attempt: int, resume_from: str | None) -> None:
    """Print the PyTorchJob, ConfigMap and Secret a spec would launch, as YAML."""
    from service.controller.manifests import render_for_review
    from service.spec import SpecInvalid

    try:
        click.echo(render_for_review(file.read(), attempt=attempt, resume_from=resume_from, settings=_settings()))
    except SpecInvalid as exc:
        _refused(exc)


def _ensure_generated_admin_token(settings: Settings) -> Path:
    path = settings.generated_admin_token_path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(new_token_value() + "\n")
    return path


@cli.group()
def db() -> None:
    """Database schema migrations."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from service.db import migrate

    migrate.upgrade(_settings(), revision)


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (`base` empties the database)."""
    from service.db import migrate

    migrate.downgrade(_settings(), revision)


@db.command("current")
def db_current() -> None:
    """Print the schema revision the database is at."""
    from service.db import migrate
    from service.db.session import make_engine

    settings = _settings()
    current = migrate.current_revision(make_engine(settings.resolved_database_url))
    click.echo(f"{current or 'empty'} (head {migrate.head_revision(settings)})")


# --- tokens ------------------------------------------------------------------------------------


@cli.group()
def tokens() -> None:
    """API tokens (admin)."""


@tokens.command("create")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--name", default=None, help="Holder of the token (default: the role).")
@click.option("--local", is_flag=True, help="Write straight to the database instead of the API (bootstrap).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tokens_create(ctx: click.Context, role: str, name: str | None, local: bool, as_json: bool) -> None:
    """Mint a token; its secret is printed once."""
    name = name or role
    if local:
        from service.db.session import get_sessionmaker
        from service.tokens import mint_token

        with get_sessionmaker(_settings().resolved_database_url)() as session:
            token, value = mint_token(session, name=name, role=Role(role), created_by="pretrainctl --local")
        created = {"id": token.id, "name": name, "role": role, "token": value}
    else:
        with api(ctx) as client:
            created = client.create_token(name=name, role=role)
    _print(created, as_json, lambda c: click.echo(c["token"]))


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

    _print(rows, as_json, human)


@tokens.command("revoke")
@click.argument("token_id", type=int)
@click.pass_context
def tokens_revoke(ctx: click.Context, token_id: int) -> None:
    """Revoke a token by id."""
    with api(ctx) as client:
        client.revoke_token(token_id)
    click.echo(f"token {token_id} revoked")


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

    _print(job, as_json, human)


@cli.command()
@click.argument("file", type=click.File("r"))
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="Inverse question: tokens these GPUs see in --days.")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=None, help="Wall-clock days for --gpus.")
@click.option("--tokens", "token_budget", type=click.IntRange(min=1), default=None, help="Token budget for --deadline (default: the spec's).")
@click.option("--deadline", "deadline_days", type=click.FloatRange(min=0, min_open=True), default=None, help="Inverse question: GPUs to train the budget in this many days.")
@click.option("--json", "as_json", is_flag=True)
def plan(file, gpus: int | None, days: float | None, token_budget: int | None, deadline_days: float | None, as_json: bool) -> None:
    """Plan the spec in FILE locally: parameters, memory per GPU, FLOPs, time, advice."""
    from service.admission import plan_spec
    from service.spec import SpecInvalid, parse_spec_text

    try:
        report = plan_spec(parse_spec_text(file.read()), gpus=gpus, days=days, token_budget=token_budget, deadline_days=deadline_days)
    except SpecInvalid as exc:
        _refused(exc)
    _print(report.model_dump(mode="json"), as_json, _show_plan)
    if report.problems:
        sys.exit(3)


def _show_plan(plan: dict[str, Any]) -> None:
    params, memory, compute, advice = plan["params"], plan["memory"], plan["compute"], plan["advice"]
    click.echo(f"parameters   {params['total']:,} total, {params['non_embedding']:,} non-embedding, {params['active']:,} active")
    click.echo(f"vocabulary   {plan['vocab']['padded']:,} padded, {plan['vocab']['spare']:,} spare rows")
    verdict = "fits" if memory["fits"] else "DOES NOT FIT"
    click.echo(f"memory/GPU   {memory['per_gpu_gib']:.1f} GiB of {memory['capacity_gib']:.0f} GiB ({memory['utilisation']:.0%}): {verdict}")
    for part, gib in memory["breakdown"].items():
        if isinstance(gib, int | float):
            click.echo(f"  {part:<22} {gib:>9.2f} GiB")
    click.echo(f"compute      {compute['flops']:.3e} FLOPs (6ND {compute['flops_6nd']:.3e}), {compute['gpu_hours']:,.0f} GPU-hours, {compute['days']:.1f} days at MFU {compute['mfu']:.0%}")
    for stage in plan["stages"]:
        click.echo(f"stage        {stage['name']}: {stage['train_iters']:,} iters ({stage['warmup_iters']:,} warmup) at seq {stage['seq_length']:,}")
    click.echo(f"advice       critical batch {advice['critical_batch_tokens']:,.0f} tokens vs {advice['batch_tokens']:,} in the spec; compute-optimal {advice['compute_optimal_tokens']:.3e} tokens")
    inverse = plan.get("inverse") or {}
    if budget := inverse.get("tokens_for_budget"):
        click.echo(f"inverse      {budget['gpus']:,} GPUs × {budget['days']:g} days at MFU {budget['mfu']:.0%} see {budget['tokens']:.3e} tokens")
    if deadline := inverse.get("gpus_for_deadline"):
        click.echo(f"inverse      {deadline['token_budget']:.3e} tokens in {deadline['deadline_days']:g} days need {deadline['gpus']:,} GPUs ({deadline['nodes']:,} nodes)")
    for warning in plan.get("spec_warnings", []):
        click.echo(f"warning      {'.'.join(map(str, warning['loc']))}: {warning['msg']}")
    for warning in plan["warnings"]:
        click.echo(f"warning      {warning}")
    for problem in plan["problems"]:
        click.echo(f"REFUSED      {'.'.join(map(str, problem['loc']))}: {problem['msg']}")


@cli.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def get(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """Show one job."""
    with api(ctx) as client:
        job = client.get_job(job_id)
    _print(job, as_json, _show_job)


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
    for attempt in job["attempts"]:
        click.echo(f"  attempt {attempt['number']}  {attempt['state']:<10} {attempt['reason']}")
    for warning in job["warnings"]:
        click.echo(f"  warning    {'.'.join(map(str, warning['loc']))}: {warning['msg']}")


@cli.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice([s.value for s in JobState]))
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
            click.echo(f"{job['id']:>6}  {job['name']:<32} {job['state']:<10} {job['owner']:<16} {job['created_at']}")
        more = f"; next page: --cursor {page['next_cursor']}" if page["next_cursor"] else ""
        click.echo(f"{len(page['data'])} of {page['count']} jobs{more}")

    _print(page, as_json, human)


@cli.command()
@click.argument("job_id", type=int)
@click.option("--reason", default=None, help="Why, for the audit log.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cancel(ctx: click.Context, job_id: int, reason: str | None, as_json: bool) -> None:
    """Cancel a job."""
    with api(ctx) as client:
        job = client.cancel(job_id, reason)
    _print(job, as_json, lambda j: click.echo(f"job {j['id']} {j['state']}"))


@cli.command()
@click.argument("job_id", type=int)
@click.option("--after", type=int, default=None, help="Only events after this id.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def events(ctx: click.Context, job_id: int, after: int | None, as_json: bool) -> None:
    """Print a job's audit log, oldest first (every page)."""
    rows: list[dict[str, Any]] = []
    with api(ctx) as client:
        while True:
            page = client.events(job_id, after=after)
            rows.extend(page["data"])
            if page["next_cursor"] is None:
                break
            after = page["next_cursor"]

    def human(rows: list[dict[str, Any]]) -> None:
        for e in rows:
            attempt = f"a{e['attempt']}" if e["attempt"] is not None else "-"
            why = f"  ({e['reason']})" if e["reason"] else ""
            click.echo(f"{e['created_at']}  {attempt:<4} {e['kind']:<22} {e['actor']}{why}")

    _print(rows, as_json, human)


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

    _print(rows, as_json, human)


@cli.command()
@click.argument("job_id", type=int)
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True)
@click.pass_context
def follow(ctx: click.Context, job_id: int, interval: float) -> None:
    """Follow a job live: per-channel loss as steps land, and every event, until it ends."""
    import time

    after_event, next_step = None, 0
    with api(ctx) as client:
        while True:
            job = client.get_job(job_id)
            for event in client.events(job_id, after=after_event)["data"]:
                after_event = event["id"]
                attempt = f"a{event['attempt']}" if event["attempt"] is not None else "-"
                why = f": {event['reason']}" if event["reason"] else ""
                click.echo(f"  event  {attempt:<4} {event['kind']}{why}")
            points = client.metrics(job_id, min_step=next_step, attempt=job["attempts"][-1]["number"])
            by_step: dict[int, dict[str, Any]] = {}
            for point in points:
                by_step.setdefault(point["step"], {})[point["name"]] = point["value"] if point["value"] is not None else point["nonfinite"]
            for step in sorted(by_step):
                values = by_step[step]
                if "loss" not in values:
                    continue
                channels = "  ".join(
                    f"{name.split('/', 1)[1]} {_number(v)}" for name, v in sorted(values.items()) if name.startswith("loss/")
                )
                click.echo(f"step {step:>6}  loss {_number(values['loss'])}  {channels}  lr {_number(values.get('lr'), '.2e')}")
                next_step = step + 1
            if job["state"] in ("succeeded", "failed", "cancelled", "paused"):
                click.echo(f"job {job_id} {job['state']}" + (f": {job['state_reason']}" if job["state_reason"] else ""))
                sys.exit(0 if job["state"] == "succeeded" else 1)
            time.sleep(interval)


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-out", show_default=True)
@click.option("--spec", "spec_path", type=click.Path(exists=True, dir_okay=False), default=None, help="Default: examples/demo.yaml.")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="Also train the spec without its fault, for comparison.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=900, show_default=True, help="Seconds each job may take.")
def demo(out_dir: str, spec_path: str | None, baseline: bool, timeout_s: float) -> None:
    """The whole loop on this machine: a spike caught, a run rolled back and finished, a report."""
    from service import demo as demo_run

    try:
        result = demo_run.run(
            out_dir=Path(out_dir),
            spec_path=Path(spec_path) if spec_path else demo_run.DEMO_SPEC,
            baseline=baseline,
            timeout_s=timeout_s,
            echo=click.echo,
        )
    except ApiError as exc:  # the demo's own service refused the spec: say why, cleanly
        _exit_on_api_error(exc)
    sys.exit(0 if result.ok else 1)


@cli.command()
@click.argument("job_id", type=int)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Default: job-<id>-report.html.")
@click.option("--baseline", "baseline_id", type=int, default=None, help="Another job to draw beside it (grey, dashed).")
@click.pass_context
def report(ctx: click.Context, job_id: int, out_path: str | None, baseline_id: int | None) -> None:
    """Write a job's report: loss per channel across attempts, eval PPL, events, plan (HTML)."""
    from service import run_report

    with api(ctx) as client:
        run = run_report.collect(client, job_id)
        baseline = run_report.collect(client, baseline_id) if baseline_id is not None else None
    path = Path(out_path or f"job-{job_id}-report.html")
    path.write_text(run_report.render_html(run, baseline=baseline))
    click.echo(str(path))


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

    _print(result, as_json, human)


@cli.group()
def watchdog() -> None:
    """The loss-anomaly detector the service runs."""


@watchdog.command("replay")
@click.argument("file")
@click.option("--policy", "policy_path", default=None, help="Watchdog knobs (JSON/YAML), or a whole job spec.")
def watchdog_replay(file: str, policy_path: str | None) -> None:
    """Replay trainer records (one JSON per line, `-` for stdin); print one JSON line per verdict."""
    from service.watchdog.replay import run_replay

    sys.exit(run_replay(file, policy_path))


@watchdog.command("run")
@click.option("--consumer", default="watchdog-1", show_default=True, help="This consumer's name in the group.")
def watchdog_run(consumer: str) -> None:
    """Consume the shared metrics stream on Redis (cluster mode; serve runs one in-process)."""
    import logging
    import signal
    import threading

    from service.watchdog.consumer import run

    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException("PRETRAIN_REDIS_URL is not set: without Redis the watchdog runs inside serve")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        run(settings, stop, consumer=consumer)


def main() -> None:
    cli(prog_name="pretrainctl")


if __name__ == "__main__":
    main()
