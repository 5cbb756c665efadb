"""The composition root: each of the service's processes is built here, once, from its settings.

A process gets one engine (per URL), one notifier, one backend and one controller, made here
and handed to what uses them; nothing else keeps a registry of them. The API is the FastAPI
app of `service.api.app.create_app`, given its parts; on the embedded default it also runs the
controller in a thread, started and stopped by the app's lifespan, and woken by every change
the API (or its in-process watchdog) makes through the in-process notifier.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from celery import Celery
from fastapi import FastAPI

from service import tasks
from service.api.app import create_app
from service.api.spec_body import warm_spec_pool
from service.controller.loop import Controller, backend_for
from service.db.session import get_sessionmaker
from service.settings import Settings, get_settings
from service.tokens import new_token_value


class ConfigurationError(Exception):
    """The settings cannot run the process asked for; the message says what to set."""


def load_settings() -> Settings:
    """The process's settings, or a ConfigurationError that says what is wrong with them."""
    try:
        return get_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigurationError(f"bad configuration: {exc}") from exc


def controller(settings: Settings, backend=None) -> Controller:
    """The controller on the settings' database and backend."""
    return Controller(
        settings, backend or backend_for(settings), get_sessionmaker(settings.resolved_database_url)
    )


# --- the API -------------------------------------------------------------------------------------


def api(settings: Settings) -> FastAPI:
    """The API of a cluster: changes go to the Celery workers (Redis), a controller elsewhere."""
    return create_app(settings)


def embedded_api(settings: Settings) -> FastAPI:
    """The embedded default's API: the controller runs beside it, woken by every change."""
    notifier = tasks.InProcessNotifier()
    backend = backend_for(settings)
    loop = controller(settings, backend)
    notifier.listen(loop.notify)

    @contextlib.asynccontextmanager
    async def run_controller(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        threading.Thread(target=loop.run, args=(stop,), name="controller", daemon=True).start()
        try:
            yield
        finally:
            stop.set()

    app = create_app(settings, notifier=notifier, log_reader=backend, lifespan=run_controller)
    app.state.controller = loop
    return app


def serve(settings: Settings, *, host: str, port: int, say: Callable[[str], None]) -> None:
    """Run the API; on the embedded default migrate first and run the controller beside it."""
    import uvicorn

    from service.db import migrate

    if settings.is_embedded:
        migrate.upgrade(settings)
    if settings.admin_token is None and settings.environment == "development":
        path = ensure_generated_admin_token(settings)
        say(f"no PRETRAIN_ADMIN_TOKEN set: the admin token is in {path}")
    if settings.is_embedded and settings.backend == "local":
        if "ingest_url" not in settings.model_fields_set:  # trainers report to this very server
            settings = settings.model_copy(update={"ingest_url": f"http://{host}:{port}"})
        app = embedded_api(settings)
    else:
        app = api(settings)
    warm_spec_pool(settings.spec_workers)  # before the first spec, not while it waits
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level)


def ensure_generated_admin_token(settings: Settings) -> Path:
    """The development server's made-up admin token, made on first start (owner-only file)."""
    path = settings.generated_admin_token_path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(new_token_value() + "\n")
    return path


# --- the other processes -------------------------------------------------------------------------


def run_controller(settings: Settings, *, say: Callable[[str], None]) -> None:
    """The controller loop of a cluster, its backend's informer waking jobs that change."""
    _log_to_stderr(settings)
    stop = _stop_on_sigterm()
    backend = backend_for(settings)
    loop = controller(settings, backend)
    if hasattr(backend, "start_watch"):  # informer: changes in the cluster wake their job at once
        backend.start_watch(loop.notify)
    say(f"controller: {settings.backend} backend, namespace {settings.namespace}")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            loop.run(stop)
    finally:
        if hasattr(backend, "stop_watch"):
            backend.stop_watch()


def worker_app(settings: Settings) -> Celery:
    """The Celery app a worker serves: its reconcile task runs this process's one controller."""
    if not settings.redis_url:
        raise ConfigurationError("PRETRAIN_REDIS_URL is not set: without Redis the tasks run in-process")
    return tasks.make_app(settings, controller=lambda: controller(settings))


def run_worker(settings: Settings, *, concurrency: int) -> None:
    """A Celery worker for the reconciles the API and the watchdog ask for."""
    worker_app(settings).worker_main(["worker", "--loglevel=INFO", f"--concurrency={concurrency}"])


def run_watchdog(settings: Settings, *, consumer: str) -> None:
    """The watchdog of a cluster: consume the metrics stream on Redis, wake the workers."""
    from service.watchdog.consumer import run

    if not settings.redis_url:
        raise ConfigurationError("PRETRAIN_REDIS_URL is not set: without Redis the watchdog runs inside serve")
    _log_to_stderr(settings)
    stop = _stop_on_sigterm()
    with contextlib.suppress(KeyboardInterrupt):
        run(settings, stop, consumer=consumer, notifier=tasks.notifier_for(settings))


def _log_to_stderr(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _stop_on_sigterm() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop
