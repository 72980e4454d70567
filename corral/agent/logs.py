"""Send an instance's logs to the server when it asks, over the agent's own outbound link.

A log request arrives on the channel long-poll; one thread reads the engine's
log stream and another posts lines in small batches (every 100 ms or 500
lines).  The server's reply says whether anyone still listens; when not, the
engine stream is closed and both threads end.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from corral.agent.runtime.docker import DockerClient, DockerError
from corral.agent.session import ServerError, ServerSession, Unreachable
from corral.model import LABEL_HOST, LABEL_INSTANCE

log = logging.getLogger("corral.agent")

BATCH_LINES = 500
BATCH_SECONDS = 0.1


class LogSender:
    def __init__(self, session: ServerSession, docker: DockerClient, host_id: str) -> None:
        self._session = session
        self._docker = docker
        self._host_id = host_id

    def start(self, request: dict[str, Any]) -> None:
        threading.Thread(target=self._serve, args=(request,), name=f"logs-{request['id']}", daemon=True).start()

    def _post(self, request_id: str, lines: list[str], eof: bool) -> bool:
        try:
            reply = self._session.call("POST", f"/api/v1/agent/logs/{request_id}", {"lines": lines, "eof": eof})
            return bool(reply.get("continue"))
        except (Unreachable, ServerError) as exc:
            log.debug("log upload %s stopped: %s", request_id, exc)
            return False

    def _serve(self, req: dict[str, Any]) -> None:
        rid = str(req["id"])
        found = self._docker.list_containers(labels={LABEL_HOST: self._host_id,
                                                     LABEL_INSTANCE: str(req["instance_id"])})
        if not found:
            self._post(rid, ["(no container for this instance on the host yet)"], eof=True)
            return
        tail = req.get("tail")
        try:
            stream = self._docker.logs(found[0].id, follow=bool(req.get("follow")),
                                       tail="all" if tail is None else int(tail))
        except DockerError as exc:
            self._post(rid, [f"(engine error: {exc})"], eof=True)
            return
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            try:
                for _stream, line in stream:
                    lines.put(line.decode(errors="replace"))
            except (DockerError, OSError):
                pass
            finally:
                lines.put(None)

        threading.Thread(target=pump, name=f"logs-read-{rid}", daemon=True).start()
        done = False
        while not done:
            batch: list[str] = []
            try:
                item = lines.get(timeout=30)  # idle follow: send an empty batch to ask if anyone listens
                while True:
                    if item is None:
                        done = True
                        break
                    batch.append(item)
                    if len(batch) >= BATCH_LINES:
                        break
                    item = lines.get(timeout=BATCH_SECONDS)
            except queue.Empty:
                pass
            if not self._post(rid, batch, eof=done):
                break
        stream.close()
