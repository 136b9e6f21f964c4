"""Client addresses as numbers, read once per distinct address. Pure, no I/O.

`ipaddress` costs several microseconds per address and the hot path asked it
several times per line (the canonical text, each rule's network, is_global),
which a flood of distinct IPv6 clients turns into most of the replay. Here an
address is read once into `(version, integer)`, and everything else is integer
arithmetic. The answers are `ipaddress`'s own: text that is not plainly a dotted
quad or hex-and-colons (scope ids, embedded IPv4, anything odd) is handed to it,
and `is_global` is asked of `ipaddress` once per /24 (IPv6: /48), except in the
few blocks its special-purpose registry cuts finer, where every address is asked.
Caches are dicts cleared when full: memory stays flat under any flood.
"""

from __future__ import annotations

import ipaddress
from socket import AF_INET6, inet_ntop, inet_pton
from typing import Final

Addr = tuple[int, int]  # (4 or 6, the address as an integer)

_CACHE_MAX: Final = 2048
_V4_BLOCK, _V6_BLOCK = 8, 80  # is_global is uniform inside a /24 and a /48 outside the boundary blocks


def _boundaries(constants: type, version: int, shift: int, prefix: int) -> frozenset[int]:
    """Blocks that a special-purpose network narrower than the block size cuts (asked per address)."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for value in vars(constants).values():
        for v in value if isinstance(value, (list, tuple, frozenset, set)) else (value,):
            if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)) and v.version == version:
                nets.append(v)
    blocks = {int(n.network_address) >> shift for n in nets if n.prefixlen > prefix}
    if version == 6:
        blocks.add(0)  # ::/48 holds ::1, :: and the IPv4-mapped /96, which ipaddress judges as IPv4
    return frozenset(blocks)


# the registry's tables are private to ipaddress (and absent from its type stubs): read by name
_V4_EDGES: Final = _boundaries(getattr(ipaddress, "_IPv4Constants"), 4, _V4_BLOCK, 32 - _V4_BLOCK)  # noqa: B009
_V6_EDGES: Final = _boundaries(getattr(ipaddress, "_IPv6Constants"), 6, _V6_BLOCK, 128 - _V6_BLOCK)  # noqa: B009

# compiled, a Final name is a C static; an imported one a dict lookup in the module's globals per use
_PTON: Final = inet_pton
_NTOP: Final = inet_ntop
_AF_INET6: Final = int(AF_INET6)

_parsed: Final[dict[str, tuple[str, int, int] | None]] = {}
_global4: Final[dict[int, bool]] = {}  # is_global's, by /24 block
_global6: Final[dict[int, bool]] = {}  # by /48 block
_texts: Final[dict[int, str]] = {}  # network_text's, by (network << 8 | prefix) << 1 | (IPv6: 1)


def _v4(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) != 4 or not text.isascii():
        return None
    n = 0
    for p in parts:
        if not p.isdigit() or len(p) > 3 or (p[0] == "0" and len(p) > 1):
            return None
        o = int(p)
        if o > 255:
            return None
        n = n << 8 | o
    return n


def _v6(text: str) -> tuple[str, int] | None:
    """IPv6 text without a dot as ipaddress reads it: (its compressed text, the integer), or None (not
    hex-and-colons, or inside ::/96 or ::ffff:0:0/96: ask ipaddress). glibc's inet_pton takes nothing but
    hex digits, colons and a dotted tail (the caller sent text with a dot elsewhere); it and inet_ntop read
    and write such text as ipaddress does (tests/test_fast_paths.py), in C, but write those two blocks as
    dotted quads."""
    try:
        packed = _PTON(_AF_INET6, text)
    except (OSError, ValueError):  # ValueError: a NUL in the text
        return None
    compressed = _NTOP(_AF_INET6, packed)
    if "." in compressed:
        return None
    return compressed, int.from_bytes(packed)


def v6_text(n: int) -> str:
    """An IPv6 integer in ipaddress's compressed form (inet_ntop's, but in the two blocks it writes dotted)."""
    text = inet_ntop(AF_INET6, n.to_bytes(16, "big"))
    return ipaddress.IPv6Address(n).compressed if "." in text else text


def _read(text: str) -> tuple[str, int, int] | None:
    """(canonical text, version, integer) of an address as Postfix logs it, or None."""
    if text.startswith("IPv6:"):
        text = text[5:]
    n: int | None
    if "." in text and ":" not in text:
        n = _v4(text)
        if n is not None:
            return text, 4, n
    elif ":" in text and "." not in text:
        r6 = _v6(text)
        if r6 is not None:
            return r6[0], 6, r6[1]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return ip.compressed, 6, -1  # a scoped address: text only, never grouped into a network
    return ip.compressed, ip.version, int(ip)


def read(text: str) -> tuple[str, int, int] | None:
    """Cached `_read`: (canonical text, version, integer), or None when `text` is not an address."""
    r = _parsed.get(text)
    if r is not None or text in _parsed:  # no KeyError: raising one costs a microsecond compiled
        return r
    r = _read(text)
    if len(_parsed) >= _CACHE_MAX:
        _parsed.clear()
    _parsed[text] = r
    if r is not None and r[0] != text:
        _parsed[r[0]] = r  # the canonical text is what the rest of the pipeline asks about next
    return r


def canonical(text: str) -> str | None:
    """ipaddress.ip_address(text).compressed (an `IPv6:` prefix dropped), or None."""
    r = read(text)
    return None if r is None else r[0]


def address(text: str) -> Addr | None:
    """(version, integer) of an address text, or None (not an address, or a scoped one)."""
    r = read(text)
    return None if r is None or r[2] < 0 else (r[1], r[2])


def is_global(version: int, n: int) -> bool:
    """ipaddress's is_global, asked once per /24 or /48 block."""
    if version == 4:
        block = n >> _V4_BLOCK
        if block in _V4_EDGES:
            return ipaddress.IPv4Address(n).is_global
    else:
        block = n >> _V6_BLOCK
        if block in _V6_EDGES:
            return ipaddress.IPv6Address(n).is_global
    known = _global4 if version == 4 else _global6
    g = known.get(block)
    if g is None:
        shift = _V4_BLOCK if version == 4 else _V6_BLOCK
        g = (ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address)(block << shift).is_global
        if len(known) >= _CACHE_MAX:
            known.clear()
        known[block] = g
    return g


def network_text(version: int, n: int, prefix: int) -> str:
    """The compressed text of the /prefix network holding address `n` (ipaddress's `ip_network(strict=False)`)."""
    shift = (32 if version == 4 else 128) - prefix
    net = n >> shift << shift
    key = (net << 8 | prefix) << 1 | (0 if version == 4 else 1)
    text = _texts.get(key)
    if text is None:
        if version == 4:
            text = f"{net >> 24}.{net >> 16 & 255}.{net >> 8 & 255}.{net & 255}/{prefix}"
        else:
            text = f"{v6_text(net)}/{prefix}"
        if len(_texts) >= _CACHE_MAX:
            _texts.clear()
        _texts[key] = text
    return text
