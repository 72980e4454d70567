"""Instance addresses inside one host's subnet.

The first address of a host's subnet is its gateway (the Corral bridge, where the
host's DNS server listens); instances get the others.  Addresses are handed out
round-robin from a per-host cursor rather than lowest-first: a stop-first update
releases an instance's address while its container may still be stopping, and
handing that address straight to its replacement would make the engine refuse it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection


class SubnetFull(ValueError):
    """Every instance address of a host's subnet is taken."""


def pick_address(subnet: str, used: Collection[str], cursor: int) -> tuple[str, int]:
    """The first free instance address after offset ``cursor`` (wrapping), and the new cursor.

    Offsets 0 (network), 1 (gateway) and the last (broadcast) are never handed out.
    """
    net = ipaddress.IPv4Network(subnet)
    first, last = 2, net.num_addresses - 2
    if last < first:
        raise SubnetFull(f"subnet {subnet} has no room for instances")
    span = last - first + 1
    taken = set(used)
    start = max(cursor + 1, first)
    for step in range(span):
        offset = first + (start - first + step) % span
        address = str(net.network_address + offset)
        if address not in taken:
            return address, offset
    raise SubnetFull(f"all {span} instance addresses of subnet {subnet} are in use")
