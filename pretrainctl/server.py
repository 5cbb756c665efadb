"""The commands that run the service itself, on this machine: the one module of `pretrainctl`
that imports the `service` package, and only inside each command, so that the client commands
never load it."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator
from types import ModuleType

import click

from pretrainctl.output import exit_refused, print_data, show_plan


def _service_main() -> ModuleType:
    """`service.main`, imported with the cyclic garbage collector paused.

    The import allocates hundreds of thousands of objects that live as long as the process, and
    collecting while they load is a sixth of a service process's start (0.25 s of 1.5 on CPU);
    they are frozen out of the collector's way afterwards, as the trainer does with torch's.
    """
    gc.disable()
    try:
        from service import main
    finally:
        gc.freeze()
        gc.enable()
    return main


@contextlib.contextmanager
def _configured() -> Iterator[object]:
    """The service's settings; a bad configuration or a missing knob becomes a clean exit."""
    main = _service_main()
    try:
        yield main.load_settings()
    except main.ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc


@contextlib.contextmanager
def _spec_refusals() -> Iterator[None]:
    from service.spec import SpecInvalid

    try:
        yield
    except SpecInvalid as exc:
        exit_refused([(".".join(map(str, p.loc)), p.msg) for p in exc.problems])


@click.command()
@click.option("--host", default=None, help="Bind address [PRETRAIN_API_HOST].")
@click.option("--port", type=int, default=None, help="Port [PRETRAIN_API_PORT].")
def serve(host: str | None, port: int | None) -> None:
    """Run the API. On the embedded default it migrates its SQLite file first."""
    main = _service_main()
    with _configured() as settings:
        main.serve(
            settings,
            host=host or settings.api_host,
            port=port or settings.api_port,
            say=lambda line: click.echo(line, err=True),
        )


@click.command()
def controller() -> None:
    """Run the controller loop (cluster mode; `serve` runs one itself on the embedded default)."""
    main = _service_main()
    with _configured() as settings:
        main.run_controller(settings, say=lambda line: click.echo(line, err=True))


@click.command()
@click.option("--concurrency", type=click.IntRange(min=1), default=2, show_default=True)
def worker(concurrency: int) -> None:
    """Run a Celery worker for the asynchronous actions (needs PRETRAIN_REDIS_URL)."""
    main = _service_main()
    with _configured() as settings:
        main.run_worker(settings, concurrency=concurrency)


@click.command()
@click.argument("file", type=click.File("r"))
@click.option("--attempt", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--resume-from", default=None, help="Checkpoint path the attempt resumes from.")
@click.option(
    "--backend",
    "workload_kind",
    type=click.Choice(["kubeflow-pytorchjob", "kubeflow-trainer"]),
    default=None,
    help="What a pretrain attempt runs as: a PyTorchJob (the default) or a Trainer v2 TrainJob; "
    "unset: PRETRAIN_KUBERNETES_WORKLOAD.",
)
def render(file, attempt: int, resume_from: str | None, workload_kind: str | None) -> None:
    """Print the workload (PyTorchJob, TrainJob or Job), ConfigMap and Secret a spec would launch, as YAML."""
    from service.controller.manifests import render_for_review

    with _configured() as settings, _spec_refusals():
        if workload_kind is not None:
            settings = settings.model_copy(update={"kubernetes_workload": workload_kind})
        click.echo(render_for_review(file.read(), attempt=attempt, resume_from=resume_from, settings=settings))


@click.command()
@click.argument("file", type=click.File("r"))
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="Inverse question: tokens these GPUs see in --days.")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=None, help="Wall-clock days for --gpus.")
@click.option("--tokens", "token_budget", type=click.IntRange(min=1), default=None, help="Token budget for --deadline (default: the spec's).")
@click.option("--deadline", "deadline_days", type=click.FloatRange(min=0, min_open=True), default=None, help="Inverse question: GPUs to train the budget in this many days.")
@click.option("--json", "as_json", is_flag=True)
def plan(file, gpus: int | None, days: float | None, token_budget: int | None, deadline_days: float | None, as_json: bool) -> None:
    """Plan the spec in FILE on this machine: parameters, memory per GPU, FLOPs, time, advice."""
    from service.admission import plan_spec
    from service.spec import parse_spec_text

    with _spec_refusals():
        report = plan_spec(parse_spec_text(file.read()), gpus=gpus, days=days, token_budget=token_budget, deadline_days=deadline_days)
    report.scaling = _scaling_prediction(report)
    print_data(report.model_dump(mode="json"), as_json, show_plan)
    if report.problems:
        sys.exit(3)


def _scaling_prediction(report):
    """The saved law's prediction from the configured database; None (and a note why) without one."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.scaling.laws import plan_prediction, saved_fit_in

    with _configured() as settings:
        try:
            return plan_prediction(saved_fit_in(settings.resolved_database_url), report)
        except SQLAlchemyError as exc:
            click.echo(f"note: no scaling prediction: the database cannot be read ({type(exc).__name__})", err=True)
            return None


@click.group()
def db() -> None:
    """Database schema migrations."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from service.db import migrate

    with _configured() as settings:
        migrate.upgrade(settings, revision)


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (`base` empties the database)."""
    from service.db import migrate

    with _configured() as settings:
        migrate.downgrade(settings, revision)


@db.command("current")
@click.option("--json", "as_json", is_flag=True)
def db_current(as_json: bool) -> None:
    """Print the schema revision the database is at."""
    from service.db import migrate
    from service.db.session import make_engine

    with _configured() as settings:
        revisions = {
            "current": migrate.current_revision(make_engine(settings.resolved_database_url)),
            "head": migrate.head_revision(settings),
        }
    print_data(revisions, as_json, lambda r: click.echo(f"{r['current'] or 'empty'} (head {r['head']})"))


@click.command("replay")
@click.argument("file")
@click.option("--policy", "policy_path", default=None, help="Watchdog knobs (JSON/YAML), or a whole job spec.")
def watchdog_replay(file: str, policy_path: str | None) -> None:
    """Replay trainer records (one JSON per line, `-` for stdin); print one JSON line per verdict."""
    from service.watchdog.replay import run_replay

    sys.exit(run_replay(file, policy_path))


@click.command("run")
@click.option("--consumer", default="watchdog-1", show_default=True, help="This consumer's name in the group.")
def watchdog_run(consumer: str) -> None:
    """Consume the shared metrics stream on Redis (cluster mode; serve runs one in-process)."""
    main = _service_main()
    with _configured() as settings:
        main.run_watchdog(settings, consumer=consumer)


def mint_token_locally(*, name: str, role: str) -> dict[str, object]:
    """Write a token straight to the database (bootstrap, before any admin token exists)."""
    from service.db.models import Role
    from service.db.session import get_sessionmaker
    from service.tokens import mint_token

    with _configured() as settings, get_sessionmaker(settings.resolved_database_url)() as session:
        token, value = mint_token(session, name=name, role=Role(role), created_by="pretrainctl --local")
    return {"id": token.id, "name": name, "role": role, "token": value}


COMMANDS = (serve, controller, worker, render, plan, db)
WATCHDOG_COMMANDS = (watchdog_replay, watchdog_run)
