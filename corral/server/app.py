"""The FastAPI application and its background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from corral import __version__
from corral.api import agent, hosts, images, registries, services, system, tokens
from corral.server.state import ServerState

log = logging.getLogger("corral.server")


def create_app(state: ServerState, reconcile_every: float = 5.0) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.notifier.bind(asyncio.get_running_loop())
        tasks = [asyncio.create_task(_every(1.0, _check_hosts, state)),
                 asyncio.create_task(_every(reconcile_every, state.services.reconcile_all))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()

    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan)
    app.state.corral = state
    for module in (system, hosts, services, images, registries, tokens, agent):
        app.include_router(module.router)
    return app


def _check_hosts(state: ServerState) -> None:
    down = state.monitor.check()
    if down:
        log.warning("hosts down (missed heartbeats): %s", ", ".join(down))


async def _every(seconds: float, fn: object, *args: object) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await run_in_threadpool(fn, *args)  # type: ignore[arg-type]
        except Exception:  # a failing loop must not die: log and go on
            log.exception("background task failed")
