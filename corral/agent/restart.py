"""Restart policies with exponential backoff (pure: the caller passes the time).

The agent, not Docker, restarts exited containers (they are created with
Docker's restart policy "no"), as Swarm's executor does: that way the policy
counts attempts, backs off, and reports "restarting" honestly.  A container
that ran for at least ``STABLE_AFTER`` seconds before it exited starts again
after the policy's first delay; each quick crash in a row doubles the delay, up
to ``MAX_DELAY``.

A container its healthcheck calls unhealthy is a failure, as in Swarm: the
agent stops it, and the policy (``on-failure`` included) decides whether and
when a new container replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.model import RestartPolicy

MAX_DELAY = 60.0
STABLE_AFTER = 10.0


@dataclass
class RestartBook:
    """What the agent remembers of one instance's restarts."""

    restarts: int = 0
    quick_failures: int = 0
    next_start: float = 0.0
    exit_seen_for: str = ""  # the container "FinishedAt" already accounted for
    replace: str = ""  # id of the (stopped) unhealthy container a new one replaces at next_start


@dataclass(frozen=True)
class Decision:
    restart: bool  # start it again (now or at `at`)
    at: float  # when
    reason: str  # "", or why it stays down


def should_restart(policy: RestartPolicy, exit_code: int | None, book: RestartBook) -> tuple[bool, str]:
    """``exit_code`` None: the container failed without exiting (its healthcheck said unhealthy)."""
    if policy.condition == "none":
        return False, "restart policy is none"
    if policy.condition == "on-failure" and exit_code == 0:
        return False, "completed (exit 0) and restart policy is on-failure"
    if policy.max_attempts and book.restarts >= policy.max_attempts:
        return False, f"gave up after {book.restarts} restart attempts"
    return True, ""


def on_exit(policy: RestartPolicy, exit_code: int | None, ran_for: float, now: float, book: RestartBook) -> Decision:
    """Account for one exit (``exit_code`` None: the container turned unhealthy) and decide
    whether and when to start it (or its replacement) again."""
    ok, reason = should_restart(policy, exit_code, book)
    if not ok:
        return Decision(False, now, reason)
    book.quick_failures = 0 if ran_for >= STABLE_AFTER else book.quick_failures + 1
    delay = min(MAX_DELAY, policy.delay * 2 ** max(0, book.quick_failures - 1))
    book.next_start = now + delay
    return Decision(True, book.next_start, "")
