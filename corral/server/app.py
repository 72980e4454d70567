"""The FastAPI application and its background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from corral import __version__
from corral.api import agent, events, hosts, images, network, registries, services, stacks, system, tokens
from corral.server import gcpause
from corral.server.state import ServerState

log = logging.getLogger("corral.server")

EVENTS_KEPT = 100_000  # the event log keeps this many of the newest events


def create_app(state: ServerState, reconcile_every: float = 5.0) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        state.notifier.bind(loop)
        kicked = asyncio.Event()
        def kick() -> None:
            loop.call_soon_threadsafe(kicked.set)

        state.services.on_kick = kick
        tasks = [asyncio.create_task(_every(1.0, _check_hosts, state)),
                 asyncio.create_task(_refresh_revisions(state)),
                 asyncio.create_task(_every(60.0, state.store.prune_events, EVENTS_KEPT)),
                 asyncio.create_task(_every(600.0, gcpause.full_collection)),
                 asyncio.create_task(state.overlay.run()),
                 asyncio.create_task(_reconcile_loop(state, kicked, reconcile_every))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()

    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan)
    app.state.corral = state
    for module in (system, hosts, services, stacks, events, images, registries, tokens, network, agent):
        app.include_router(module.router)
    return app


def _check_hosts(state: ServerState) -> None:
    changes = state.monitor.check()
    if changes.skipped:
        log.warning("host check ran %.1f s late: the server is overloaded; no host is marked down this round",
                    changes.late)
    if changes.down:
        log.warning("hosts down (missed heartbeats): %s", ", ".join(changes.down))
        state.services.kick()  # their instances' grace periods start now
    if changes.back:
        log.info("hosts back: %s", ", ".join(changes.back))
        state.services.kick()


async def _refresh_revisions(state: ServerState, seconds: float = 1.0) -> None:
    """Keep the notifier's table of host revisions in step with the store (other replicas write too)."""
    while True:
        await asyncio.sleep(seconds)
        seen = state.notifier.counts()
        try:
            revisions = await run_in_threadpool(state.store.host_revisions)
        except Exception:
            log.exception("reading host revisions failed")
            continue
        state.notifier.remember_all(revisions, seen)


async def _reconcile_loop(state: ServerState, kicked: asyncio.Event, seconds: float,
                          min_gap: float = 0.2) -> None:
    """Reconcile every service every ``seconds``, or soon after a kick.  Kicks that come while a
    pass runs, or within ``min_gap`` after it, make one more pass: a burst of joins is a few passes."""
    last = 0.0
    loop = asyncio.get_running_loop()
    while True:
        timeout = seconds
        wake = state.services.next_wake()
        if wake is not None:
            timeout = min(seconds, max(0.05, wake - state.store.clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(kicked.wait(), timeout)
        await asyncio.sleep(max(0.0, last + min_gap - loop.time()))
        kicked.clear()
        last = loop.time()
        try:
            await run_in_threadpool(state.services.reconcile_all)
        except Exception:  # a failing loop must not die: log and go on
            log.exception("reconcile pass failed")


async def _every(seconds: float, fn: object, *args: object) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await run_in_threadpool(fn, *args)  # type: ignore[arg-type]
        except Exception:  # a failing loop must not die: log and go on
            log.exception("background task failed")
