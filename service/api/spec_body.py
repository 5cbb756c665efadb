"""Job specs off the wire (POST /v1/jobs, /v1/plan): each request within its own limits.

These are the API's expensive routes, open to every role, so no one request may stall the rest:
each principal's rate is limited first (429 with Retry-After); the content type picks the parser
(415 for any other) and its size cap holds while the body streams in (413); parsing and
validation run in `spec_workers` processes of their own, within `spec_budget_s` (then 422 that
says so). Processes, not threads: a thread parsing YAML holds the GIL, and the event loop waited
for it (/healthz p99 near half a second under four big specs).

What crosses to a worker is pickled: the body, its format, the limits with the budget's
deadline, and `then`, a module-level function with plain arguments (`functools.partial`), never
a closure. Its result and its errors (SpecInvalid, other ServiceErrors) come back whole. When the
budget is spent or the client goes away the request stops waiting; a worker cannot be interrupted
mid-call, but what it does is bounded: it checks the deadline while it parses, and validation
runs in time bounded by the spec's own limits.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from fastapi import HTTPException, Request, status

from service.settings import Settings
from service.spec import Budget, ParseLimits, SpecFormat, parse_spec_text
from service.tokens import Principal

T = TypeVar("T")

JSON_TYPE = "application/json"
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
ACCEPTED_TYPES = (JSON_TYPE, *YAML_TYPES)
UTF8 = ("utf-8", "utf8")
# Spec workers run at a lower CPU priority than the server: under load the event loop, and the
# routes that answer in milliseconds, go first; specs share what is left.
WORKER_NICENESS = 10
# Imported once by the forkserver, so that each worker starts as a fork of it, ready to work.
WORKER_MODULES = [__name__, "service.admission", "service.jobs"]

_pools: dict[int, ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()


class RateLimiter:
    """A token bucket per principal: `burst` requests at once, refilled at `per_s` a second."""

    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s = per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, when counted)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when `key` may go now (a token is spent), else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.per_s)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.per_s


class SpecWorkers:
    """An app's way to the spec worker processes, and the rate limit in front of them."""

    def __init__(self, settings: Settings) -> None:
        self.count = settings.spec_workers
        self.rate = RateLimiter(settings.spec_rate_per_s, settings.spec_rate_burst)

    def submit(self, fn: Callable[..., T], /, *args: object) -> Future[T]:
        try:
            return spec_pool(self.count).submit(fn, *args)
        except BrokenProcessPool:  # a worker died (killed for memory, say): that pool takes no more
            _discard_pool(self.count)
            return spec_pool(self.count).submit(fn, *args)


def spec_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` spec processes, started on first use and shared by every app of this process.

    From a forkserver, never by forking the (threaded) server itself. concurrent.futures ends the
    workers when the interpreter exits.
    """
    with _pools_lock:
        if workers not in _pools:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(WORKER_MODULES)
            _pools[workers] = ProcessPoolExecutor(
                workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
            )
        return _pools[workers]


def warm_spec_pool(workers: int) -> None:
    """Start the spec workers now, so that the first specs sent do not wait for them."""
    pool = spec_pool(workers)
    wait([pool.submit(os.getpid) for _ in range(workers)])  # one process starts per task queued


def _start_worker(server: int) -> None:
    """First in each spec worker: a lower priority, and an end when the server ends.

    concurrent.futures stops its workers when the server exits cleanly, but not when a signal
    ends it (uvicorn re-raises SIGTERM once it has shut down; the kernel kills for memory): the
    workers, children of the forkserver, would wait for work forever.
    """
    os.nice(WORKER_NICENESS)
    threading.Thread(target=_exit_with, args=(server,), name="server-watch", daemon=True).start()


def _exit_with(server: int) -> None:
    try:
        select.select([os.pidfd_open(server)], [], [])  # readable once that process has ended
    except (AttributeError, OSError):  # no pidfds (macOS, Linux before 5.3), or already gone
        while _exists(server):
            time.sleep(1)
    os._exit(0)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _discard_pool(workers: int) -> None:
    with _pools_lock:
        pool = _pools.pop(workers, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


async def handle_spec(request: Request, principal: Principal, then: Callable[[dict], T]) -> T:
    """`then(spec)` for the spec in the request's body, in a spec worker, within every limit.

    `then` crosses to the worker process: a module-level function or a `functools.partial` of
    one, with arguments that pickle.
    """
    settings: Settings = request.app.state.settings
    workers: SpecWorkers = request.app.state.spec_workers
    _check_rate(workers.rate, principal)
    spec_format = _spec_format(request.headers.get("content-type"))
    body = await _read_body(request, spec_format, settings)
    budget = Budget(settings.spec_budget_s)
    limits = ParseLimits(max_nodes=settings.max_spec_values, max_depth=settings.max_spec_depth, budget=budget)
    work = workers.submit(parse_then, body, spec_format, limits, then)
    return await _within_budget(request, asyncio.wrap_future(work), budget)


def parse_then(body: bytes, spec_format: SpecFormat, limits: ParseLimits, then: Callable[[dict], T]) -> T:
    """In a spec worker: `then(spec)` for the spec in `body`, while the budget lasts."""
    limits.budget.check()  # it may have waited for a worker past the budget
    spec = parse_spec_text(body, spec_format=spec_format, limits=limits)
    limits.budget.check()
    return then(spec)


def _check_rate(rate: RateLimiter, principal: Principal) -> None:
    wait = rate.take(principal.name)
    if wait:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{principal.name} sent more than {rate.burst} specs at once or {rate.per_s:g} a second "
            "on average (PRETRAIN_SPEC_RATE_BURST, PRETRAIN_SPEC_RATE_PER_S); retry later",
            headers={"Retry-After": str(max(1, round(wait + 0.5)))},
        )


def _spec_format(content_type: str | None) -> SpecFormat:
    """The parser a content type asks for; 415 for a type, or a charset, that is not a spec's."""
    media, *parameters = (content_type or "").split(";")
    media = media.strip().lower()
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in UTF8:
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"a job spec is UTF-8 text, not {value.strip()}"
            )
    if media == JSON_TYPE:
        return "json"
    if media in YAML_TYPES:
        return "yaml"
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        f"a job spec is sent as {', '.join(ACCEPTED_TYPES)}, not {media or 'a body without a content type'}",
    )


async def _read_body(request: Request, spec_format: SpecFormat, settings: Settings) -> bytes:
    """The body, refused with 413 as soon as it passes its format's cap, declared or streamed."""
    limit = settings.max_json_spec_bytes if spec_format == "json" else settings.max_yaml_spec_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(spec_format, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(spec_format, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(spec_format: SpecFormat, limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"a {spec_format.upper()} job spec is larger than {limit} bytes "
        f"(PRETRAIN_MAX_{spec_format.upper()}_SPEC_BYTES)",
    )


async def _within_budget(request: Request, work: asyncio.Future[T], budget: Budget) -> T:
    """The work's result; a 422 once the budget is spent, the work cancelled if it has not begun."""
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({work, gone}, timeout=budget.remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if work in done:
        return work.result()
    # A worker that has not begun never does; one that has ends within the budget, unread.
    work.cancel()
    raise budget.spent()  # when the client went away, nobody reads this


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects; the body has been read, so nothing else arrives."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
