"""The short syntaxes of ``ports`` and ``volumes``, parsed into their long forms.

    ports:   "80"  "8080:80"  "127.0.0.1:8080:80"  "[::1]:8080:80"  "8000-8001:80-81/udp"  80
    volumes: "/data"  "data:/data"  "./conf:/etc/app:ro,z"  "~/x:/x:rw"

A port entry gives one long-form mapping per port (ranges expanded, ``published`` None when
the short form names no host port); a volume entry gives one long-form mapping, with the
mode options of the short form (``ro``, ``z``, ``nocopy``, ``rshared``, ``cached``) moved to
the long form's keys, so that later stages see a single shape.  Both raise Invalid saying
what was expected.
"""

from __future__ import annotations

import re
from typing import Any

from corral.compose.errors import Invalid
from corral.compose.values import as_int, describe

_PORTS_HELP = "expected [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL], e.g. 8080:80 or 8080:80/udp"
_PROPAGATION = {"shared", "slave", "private", "rshared", "rslave", "rprivate"}
_CONSISTENCY = {"consistent", "cached", "delegated"}


def _port_range(text: str, what: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not m:
        raise Invalid(f"invalid {what} port {describe(text)}: {_PORTS_HELP}")
    low = int(m.group(1))
    high = int(m.group(2)) if m.group(2) else low
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise Invalid(f"invalid {what} port {port}: ports are 1 to 65535")
    if high < low:
        raise Invalid(f"invalid {what} port range {describe(text)}: the end is below the start")
    return low, high


def _expand(target: tuple[int, int], published: tuple[int, int] | None, protocol: str,
            extra: dict[str, Any]) -> list[dict[str, Any]]:
    count = target[1] - target[0] + 1
    if published is not None and published[1] - published[0] + 1 != count:
        raise Invalid(f"published ports {published[0]}-{published[1]} and target ports "
                      f"{target[0]}-{target[1]} differ in number: give ranges of the same length")
    out = []
    for i in range(count):
        entry: dict[str, Any] = {"target": target[0] + i,
                                 "published": None if published is None else published[0] + i,
                                 "protocol": protocol}
        out.append(entry | extra)
    return out


def parse_port(value: Any) -> list[dict[str, Any]]:
    """One ``ports`` entry (short or long form) as long-form mappings."""
    if isinstance(value, dict):
        return _long_port(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Invalid(f"invalid port {describe(value)}: {_PORTS_HELP}")
    if isinstance(value, float):
        raise Invalid(f"invalid port {value!r}: {_PORTS_HELP}")
    text = str(value).strip()
    protocol = "tcp"
    if "/" in text:
        text, protocol = text.rsplit("/", 1)
    extra: dict[str, Any] = {}
    if text.startswith("["):
        ip, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise Invalid(f"invalid port {describe(value)}: {_PORTS_HELP}")
        extra["host_ip"] = ip
        parts = ["", *rest[1:].split(":")]
    else:
        parts = text.split(":")
        if len(parts) == 3:
            extra["host_ip"] = parts[0]
    if len(parts) == 1:
        return _expand(_port_range(parts[0], "target"), None, protocol, extra)
    if len(parts) not in (2, 3):
        raise Invalid(f"invalid port {describe(value)}: {_PORTS_HELP}")
    published_text, target_text = parts[-2], parts[-1]
    published = _port_range(published_text, "published") if published_text.strip() else None
    return _expand(_port_range(target_text, "target"), published, protocol, extra)


def _long_port(value: dict[str, Any]) -> list[dict[str, Any]]:
    if "target" not in value:
        raise Invalid("a port in long syntax needs target")
    target = _port_range(str(as_int(value["target"], 1, 65535)), "target")
    published_value = value.get("published")
    published = None
    if published_value is not None and str(published_value).strip():
        published = _port_range(str(published_value), "published")
    protocol = str(value.get("protocol") or "tcp")
    extra = {k: v for k, v in value.items() if k not in ("target", "published", "protocol")}
    return _expand(target, published, protocol, extra)


def parse_volume(value: Any) -> dict[str, Any]:
    """One service ``volumes`` entry (short or long form) as a long-form mapping."""
    if isinstance(value, dict):
        entry = dict(value)
    elif isinstance(value, str):
        entry = _short_volume(value)
    else:
        raise Invalid(f"invalid volume {describe(value)}: expected [SOURCE:]TARGET[:MODE]")
    target = entry.get("target")
    if entry.get("type") != "npipe" and (not isinstance(target, str) or not target.startswith("/")):
        raise Invalid(f"invalid volume {describe(value)}: the path in the container (target) must be "
                      "absolute, e.g. /data")
    return entry


def _short_volume(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}
    if len(parts) > 3 or not parts[0]:
        raise Invalid(f"invalid volume {describe(text)}: expected [SOURCE:]TARGET[:MODE]")
    source, target = parts[0], parts[1]
    kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    entry: dict[str, Any] = {"type": kind, "source": source, "target": target}
    for option in parts[2].split(",") if len(parts) == 3 else []:
        if option in ("ro", "rw"):
            entry["read_only"] = option == "ro"
        elif option in ("z", "Z"):
            entry.setdefault("bind", {})["selinux"] = option
        elif option in _PROPAGATION:
            entry.setdefault("bind", {})["propagation"] = option
        elif option == "nocopy":
            entry.setdefault("volume", {})["nocopy"] = True
        elif option in _CONSISTENCY:
            entry["consistency"] = option
        else:
            raise Invalid(f"invalid volume {describe(text)}: unknown mode {option!r} "
                          "(expected ro, rw, z, Z, nocopy, or a propagation such as rshared)")
    return entry
