"""Scores: which of the feasible hosts the next instance goes to.

The score is lexicographic (lower wins), so every rule is easy to state and to test:

1. emulation: native hosts before emulated ones (emulated hosts are used only when no
   native host can take the instance, and only when the service allows emulation);
2. soft affinities: hosts that satisfy more of the service's soft affinities and
   anti-affinities (to labels, to other services' instances) first;
3. placement preferences (Swarm's ``spread=node.labels.zone``): the value of the
   first preference label with the fewest instances of the service first, then the
   second label within it, and so on; hosts without the label form one more value;
   values that tie go in a seeded order;
4. strategy —
   *spread* (default): fewest instances of this service on the host (its *level*),
   then hosts that already hold the image digest the instance needs (edge links are
   slow), then fewest instances of any service;
   *binpack*: the fullest host (dominant share of CPU or memory) first, then
   locality, then most instances;
5. tie-break: the host's position in a walk seeded by a hash of the service name, so
   services do not all start on the same host; the legacy API breaks ties by host id.

Scale.  Parts 1-3 are the same for whole groups of hosts, so feasible hosts are cut
into :class:`Bucket` s (one per emulation tier, soft-affinity score and preference
value).  A :class:`Chooser` — a tree of heaps: tiers, then one level per preference
label (zone, then rack), buckets at the leaves — picks the bucket; each node is keyed
by (its tier or its instance count, its best child's key), so placing an instance only
re-keys the nodes on that bucket's path (a few heap pushes, stale entries dropped
lazily by version), however many racks there are.  Inside a
bucket, hosts are visited along a seeded permutation of its members (start and stride
from the hash, no list shuffled) — hosts holding the image first — and a *window* of
candidates (a heap) is scored instead of every host, as Nomad scores a bounded sample:
twice the instances the bucket is expected to take, between ``MIN_WINDOW`` and
``WINDOW``; buckets of at most ``EXACT`` hosts (and the legacy API) score every host.
Spread stays exactly even anyway: a bucket works in *rounds*; round L offers only hosts
with L instances of the service, so no host gets a second one before every feasible
host of the bucket got a first (or failed a filter).  The window only decides *which*
level-L hosts go first (locality, fewest instances overall).  Placing ``k`` instances
of a new service visits about ``k + window`` hosts per bucket, whatever the fleet size;
only a bucket that runs dry is walked to its end (every host must fail before a slot
is declared unplaceable).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable, Sequence
from heapq import heappop, heappush
from typing import Any

from corral.scheduler.explain import Reason
from corral.scheduler.filters import Check

WINDOW = 24  # at most this many candidates scored at a time in a bucket
MIN_WINDOW = 4  # at least this many (best of 4 keeps load even: "power of d choices")
EXACT = 16  # buckets up to this size are scored exhaustively

Key = tuple[Any, ...]


def seed(name: str, salt: str = "") -> int:
    """A stable 64-bit seed (Python's ``hash()`` of a str changes between processes)."""
    return int.from_bytes(hashlib.blake2b(f"{name}\x00{salt}".encode(), digest_size=8).digest(), "big")


def subseed(base: int, salt: str) -> int:
    """A cheap seed per bucket from the service's seed (crc32 of the salt, mixed in)."""
    return base ^ ((zlib.crc32(salt.encode()) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)


def walk(n: int, s: int) -> tuple[int, int]:
    """(start, stride) of a permutation of ``range(n)``: ``i -> (start + i * stride) % n``."""
    if n <= 1:
        return 0, 1
    start = s % n
    stride = 1 + (s >> 24) % (n - 1)
    while math.gcd(stride, n) != 1:
        stride = stride % (n - 1) + 1
    return start, stride


class Context:
    """What every bucket of one plan shares: the snapshot's hosts, this plan's own
    placements, dead hosts (failed a dynamic filter, with the reason), the filter and
    the key function."""

    __slots__ = ("added", "check", "dead", "existing", "key", "owner", "spread")

    def __init__(self, existing: dict[int, int], added: dict[int, int], dead: dict[int, Reason],
                 owner: dict[int, int], check: Check, key: Callable[[int, int, int], Key], spread: bool) -> None:
        self.existing = existing
        self.added = added
        self.dead = dead
        self.owner = owner  # host moved to another bucket than its class's (soft service affinity)
        self.check = check
        self.key = key
        self.spread = spread


class Bucket:
    """Feasible hosts with equal emulation tier, soft score and preference values."""

    __slots__ = ("bid", "ctx", "d", "front", "front_set", "heap", "i", "key", "level", "members", "n",
                 "next_level", "parent", "prefixes", "slot", "start", "stride", "tb")

    def __init__(self, bid: int, key: Key, prefixes: tuple[tuple[Any, ...], ...], ctx: Context) -> None:
        self.bid = bid
        self.key = key  # (emulated, -soft score)
        self.prefixes = prefixes  # preference values: ((zone,), (zone, rack))
        self.ctx = ctx
        self.members: Sequence[int] = ()
        self.front: list[int] = []
        self.front_set: frozenset[int] | None = None
        self.heap: list[tuple[Key, int]] = []
        self.i = 0
        self.n = 0
        self.d = 0
        self.start, self.stride = 0, 1
        self.level = 0
        self.next_level: int | None = None
        self.parent: _Node | None = None  # in the Chooser's tree
        self.slot = 0
        self.tb = 0  # seeded tie-break between buckets with equal preference counts

    def ready(self, members: Sequence[int], front: list[int], s: int, demand: int | None,
              ordered: bool) -> None:
        """Fix the members and the walk: ``front`` (hosts holding the image) first, then a
        seeded permutation of ``members`` (in member order when ``ordered``).

        ``demand`` (instances this bucket is expected to take) sizes the window: twice the
        demand, between MIN_WINDOW and WINDOW; None scores every host (the legacy API).
        """
        self.members = members
        self.n = len(members)
        self.front = front
        self.front_set = frozenset(front) if front else None
        total = self.n + len(front)
        if demand is None or total <= EXACT:
            self.d = total
        else:
            self.d = min(total, WINDOW, max(MIN_WINDOW, 2 * demand))
        self.start, self.stride = (0, 1) if ordered else walk(self.n, s)
        self.tb = s

    def _fill(self, d: int) -> None:
        ctx = self.ctx
        heap = self.heap
        existing, added, dead, owner = ctx.existing, ctx.added, ctx.dead, ctx.owner
        check, key, spread = ctx.check, ctx.key, ctx.spread
        front, fs = self.front, self.front_set
        nf = len(front)
        members, n, start, stride = self.members, self.n, self.start, self.stride
        end = nf + n
        i, level, nl, bid = self.i, self.level, self.next_level, self.bid
        while True:
            while len(heap) < d and i < end:
                if i < nf:
                    pos = front[i]
                else:
                    pos = members[(start + (i - nf) * stride) % n]
                    if fs is not None and pos in fs:
                        i += 1
                        continue
                i += 1
                if pos in dead:
                    continue
                if owner and owner.get(pos, bid) != bid:
                    continue
                mine = existing.get(pos, 0) + added.get(pos, 0)
                if spread and mine != level:
                    if mine > level and (nl is None or mine < nl):
                        nl = mine
                    continue
                reason = check(pos, mine)
                if reason is not None:
                    dead[pos] = reason
                    continue
                heappush(heap, (key(pos, mine, i), pos))
            if heap or not spread or nl is None:
                break
            level, nl, i = nl, None, 0  # next round: hosts with one more instance
        self.i, self.level, self.next_level = i, level, nl

    def peek(self) -> Key | None:
        """The best candidate's key (the window filled first), None when the bucket is exhausted."""
        if len(self.heap) < self.d:
            self._fill(self.d)
        return self.heap[0][0] if self.heap else None

    def nonempty(self) -> bool:
        """Whether any host of the bucket can take an instance (finds one candidate at most)."""
        if not self.heap:
            self._fill(1)
        return bool(self.heap)

    def take(self) -> tuple[int, int]:
        """The best candidate of a full window: (host position, its tie-break)."""
        if len(self.heap) < self.d:
            self._fill(self.d)
        k, pos = heappop(self.heap)
        return pos, k[-1]

    def placed(self, pos: int, mine: int, tb: int) -> None:
        """Bookkeeping after an instance went to ``pos`` (which now holds ``mine`` of the service)."""
        ctx = self.ctx
        if ctx.spread:
            if self.next_level is None or mine < self.next_level:
                self.next_level = mine
            return
        reason = ctx.check(pos, mine)
        if reason is not None:
            ctx.dead[pos] = reason
        else:
            heappush(self.heap, (ctx.key(pos, mine, tb), pos))


class _Node:
    """A node of the :class:`Chooser`: a tier (``label`` fixed) or a preference value
    (``prefix``: its key part is the live instance count of that value)."""

    __slots__ = ("by_label", "children", "heap", "label", "parent", "prefix", "slot", "vers")

    def __init__(self, label: Any, prefix: tuple[Any, ...] | None, parent: _Node | None, slot: int) -> None:
        self.label = label
        self.prefix = prefix
        self.parent = parent
        self.slot = slot
        self.children: list[_Node | Bucket] = []
        self.by_label: dict[Any, _Node] | None = {}
        self.heap: list[tuple[Key, int, int]] = []  # (child key, child version, child slot)
        self.vers: list[int] = []

    def child(self, label: Any, prefix: tuple[Any, ...] | None) -> _Node:
        assert self.by_label is not None
        node = self.by_label.get(label)
        if node is None:
            node = _Node(label, prefix, self, len(self.children))
            self.children.append(node)
            self.vers.append(0)
            self.by_label[label] = node
        return node

    def set(self, slot: int, key: Key | None) -> None:
        self.vers[slot] += 1
        if key is not None:
            heappush(self.heap, (key, self.vers[slot], slot))

    def best(self) -> tuple[Key, int] | None:
        heap, vers = self.heap, self.vers
        while heap:
            k, v, s = heap[0]
            if vers[s] == v:
                return k, s
            heappop(heap)
        return None


class Chooser:
    """Picks the bucket whose (tier, preference counts, seeded tie-break) is lowest.

    Buckets whose preference counts tie are taken in a seeded order (as Swarm does) rather
    than by their best host, so a bucket only has to show one candidate to be compared:
    with 250 racks that is 250 hosts visited, not every host.

    ``counts`` maps a preference prefix (``("edge-1",)``, ``("edge-1", "r07")``) to the
    service's instances there; the caller increments it for the chosen bucket's prefixes,
    then calls :meth:`update`.
    """

    def __init__(self, buckets: Sequence[Bucket], counts: dict[tuple[Any, ...], int]) -> None:
        self.counts = counts
        self.root = _Node(None, None, None, 0)
        for b in buckets:
            node = self.root.child(("tier", b.key), None)
            for prefix in b.prefixes[:-1]:
                node = node.child(prefix, prefix)
            # the deepest preference value is the bucket itself (one bucket per value)
            b.parent, b.slot = node, len(node.children)
            node.children.append(b)
            node.vers.append(0)
        self._init(self.root)

    def _key(self, node: _Node) -> Key | None:
        best = node.best()
        if best is None:
            return None
        return (self.counts.get(node.prefix, 0) if node.prefix is not None else node.label, best[0])

    def _leaf(self, b: Bucket) -> Key | None:
        if not b.nonempty():
            return None
        return (self.counts.get(b.prefixes[-1], 0), b.tb) if b.prefixes else (b.tb,)

    def _init(self, node: _Node) -> Key | None:
        # leaves start as if non-empty (their key does not depend on their hosts); pick()
        # checks the one it lands on, so buckets never picked are never walked
        node.by_label = None  # only needed while building
        counts = self.counts
        for slot, c in enumerate(node.children):
            if isinstance(c, Bucket):
                node.set(slot, (counts.get(c.prefixes[-1], 0), c.tb) if c.prefixes else (c.tb,))
            else:
                node.set(slot, self._init(c))
        return self._key(node)

    def pick(self) -> Bucket | None:
        while True:
            node = self.root
            while True:
                best = node.best()
                if best is None:
                    return None
                c = node.children[best[1]]
                if isinstance(c, Bucket):
                    break
                node = c
            if c.nonempty():
                return c
            self.update(c)  # exhausted: drop it and pick again

    def update(self, b: Bucket) -> None:
        """Re-key the path from ``b`` (just taken from) to the root."""
        key = self._leaf(b)
        node, slot = b.parent, b.slot
        while node is not None:
            node.set(slot, key)
            key = self._key(node)
            slot = node.slot
            node = node.parent
