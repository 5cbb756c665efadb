"""Job specs off the wire (POST /v1/jobs, /v1/plan): each request within its own limits.

These are the API's expensive routes, open to every role, so no one request may stall the rest:
each principal's rate is limited first (429 with Retry-After); the content type picks the parser
(415 for any other) and its size cap holds while the body streams in (413); parsing and
validation run on `spec_workers` threads of their own, so that neither the event loop nor the
threads of the other routes wait for them, within `spec_budget_s` (then 422 that says so), and
stop when the client goes away.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    """The threads that parse and validate specs, and the rate limit in front of them."""

    def __init__(self, settings: Settings) -> None:
        self.executor = ThreadPoolExecutor(settings.spec_workers, thread_name_prefix="spec")
        self.rate = RateLimiter(settings.spec_rate_per_s, settings.spec_rate_burst)


async def handle_spec(request: Request, principal: Principal, then: Callable[[dict], T]) -> T:
    """`then(spec)` for the spec in the request's body, off the event loop, within every limit."""
    settings: Settings = request.app.state.settings
    workers: SpecWorkers = request.app.state.spec_workers
    _check_rate(workers.rate, principal)
    spec_format = _spec_format(request.headers.get("content-type"))
    body = await _read_body(request, spec_format, settings)
    budget = Budget(settings.spec_budget_s)
    limits = ParseLimits(max_nodes=settings.max_spec_values, max_depth=settings.max_spec_depth, budget=budget)

    def work() -> T:
        budget.check()  # it may have waited for a thread past the budget, or for a gone client
        spec = parse_spec_text(body, spec_format=spec_format, limits=limits)
        budget.check()
        return then(spec)

    return await _within_budget(request, asyncio.wrap_future(workers.executor.submit(work)), budget)


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
    """The work's result; a 422 once the budget is spent, the work told to stop either way."""
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({work, gone}, timeout=budget.remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if work in done:
        return work.result()
    budget.stop()  # the thread stops at its next check instead of working for nobody
    work.add_done_callback(_outcome_seen)
    raise budget.spent()  # when the client went away, nobody reads this


def _outcome_seen(work: asyncio.Future) -> None:
    """Take the abandoned work's outcome (its SpecInvalid, mostly), which nobody will read."""
    if not work.cancelled():
        work.exception()


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects; the body has been read, so nothing else arrives."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
