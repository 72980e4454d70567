"""A short-lived cache of listing responses (``service ls``, ``ps``) for busy servers.

With a large fleet, listings are what people and scripts call most, and each
builds the same JSON from the same rows.  An answer is reused while the
store's :attr:`~corral.store.store.Store.generation` (this process's writes
that a listing would show) is unchanged and it is younger than ``ttl``; so a
change made through this server shows at once, and one made through another
replica within ``ttl`` seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from fastapi import Response


def json_response(body: Any) -> Response:
    """``body`` as compact JSON, without FastAPI's jsonable_encoder walk (slow on big bodies such
    as listings and desired sets): for bodies that are plain JSON types already."""
    return _response(_compact(body))


def _compact(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _response(content: bytes) -> Response:
    return Response(content=content, media_type="application/json")


class ListingCache:
    def __init__(self, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._answers: dict[Hashable, tuple[int, float, bytes]] = {}
        self._lock = threading.Lock()

    def response(self, key: Hashable, generation: int, make: Callable[[], Any]) -> Response:
        now = self._clock()
        hit = self._answers.get(key)
        if hit is None or hit[0] != generation or now - hit[1] > self.ttl:
            body = _compact(make())
            with self._lock:
                if len(self._answers) > 1000:
                    self._answers.clear()
                self._answers[key] = (generation, now, body)
        else:
            body = hit[2]
        return _response(body)
