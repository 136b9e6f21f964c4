"""Access-map keys and lines, pure: what relaywatch may write for a block, rendered from a parsed
`ipaddress` value or a checked SASL name, never copied from a log line."""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from relaywatch.model import ENFORCEMENT, ConfigError, RelaywatchError
from relaywatch.postfix.mapguard import BEGIN, END

# Map type -> suffix of the file Postfix really opens (None: it reads the source).
COMPILED_SUFFIX: dict[str, str | None] = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb", "cidr": None}
# Types Postfix reads from a database server: the path is the client's .cf file, never written with
# blocks (relaywatch's rows in the database are the map); keys as for hash (postfix/pgsql_maps.py).
DATABASE_TYPES = frozenset({"pgsql"})
MAP_TYPES = (*COMPILED_SUFFIX, *sorted(DATABASE_TYPES))
KINDS = tuple(ENFORCEMENT)  # what can be blocked



class InvalidBlock(RelaywatchError, ValueError):
    """A block target that cannot be written to this map safely; nothing was written."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class MapSpec:
    """A Postfix lookup table as main.cf names it: `type:path`."""

    type: str
    path: str

    @classmethod
    def parse(cls, text: str, *, default_type: str) -> MapSpec:
        """`hash:/etc/postfix/reject_list`, or a bare path that gets `default_type`."""
        text = text.strip()
        kind, sep, path = text.partition(":")
        if not sep or kind.startswith("/"):
            kind, path = default_type, text
        if kind not in MAP_TYPES:
            raise ConfigError(f"map {text!r}: type {kind!r} is not supported; use one of {', '.join(MAP_TYPES)}")
        if not path.startswith("/") or re.search(r"[\s,]", path):
            raise ConfigError(f"map {text!r}: the path must be absolute, without spaces or commas")
        suffix = COMPILED_SUFFIX.get(kind)
        if suffix and path.endswith(suffix):
            raise ConfigError(f"map {text!r}: name the source file, not the compiled {suffix} file")
        return cls(kind, path)

    @property
    def compiled(self) -> str | None:
        """The file Postfix opens, or None when it reads the source itself (cidr) or a database (pgsql)."""
        suffix = COMPILED_SUFFIX.get(self.type)
        return self.path + suffix if suffix else None

    @property
    def database(self) -> bool:
        """Postfix reads the blocks from a database server; `path` is the client's .cf file."""
        return self.type in DATABASE_TYPES

    def __str__(self) -> str:
        return f"{self.type}:{self.path}"


_SASL_OK = re.compile(r"[!-~]{1,255}")  # printable ASCII, no space
_TEXT_BAD = re.compile(r"[^ -~]|[$\\{}]")


@dataclass(frozen=True, slots=True)
class Block:
    """One refusal: kind is "client" (an IP), "subnet" (a network) or "sasl_user"."""

    kind: str
    target: str
    reason: str = ""


def render_key(kind: str, target: str, map_type: str) -> str:
    """The lookup key for `target` in a map of `map_type`; InvalidBlock if none is safe."""
    if map_type not in MAP_TYPES:
        raise InvalidBlock(f"unsupported map type {map_type!r}")
    cidr = map_type == "cidr"
    if kind == "client":
        return _render_client(target)
    if kind == "subnet":
        return _render_subnet(target, cidr)
    if kind == "sasl_user":
        if cidr:
            raise InvalidBlock(f"SASL user {target!r}: a cidr: map holds addresses only; use a hash: map")
        return _render_sasl(target)
    raise InvalidBlock(f"unknown block kind {kind!r}; expected one of {', '.join(KINDS)}")


def _render_client(target: str) -> str:
    try:
        addr = ipaddress.ip_address(target)
    except ValueError:
        raise InvalidBlock(f"client {target!r} is not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise InvalidBlock(f"client {target!r}: a scoped address never reaches smtpd")
        if addr.ipv4_mapped:
            raise InvalidBlock(f"client {target!r}: Postfix sees this client as {addr.ipv4_mapped}; block that")
        if addr.packed[:12] == bytes(12):
            raise InvalidBlock(f"client {target!r}: deprecated IPv4-compatible address")
    # Python and Postfix (inet_ntop) print addresses alike: lowercase, RFC 5952.
    return str(addr)


def _render_subnet(target: str, cidr: bool) -> str:
    try:
        net = ipaddress.ip_network(target, strict=True)
    except ValueError as exc:
        raise InvalidBlock(f"subnet {target!r} is not a network ({exc})") from None
    if net.prefixlen < (8 if net.version == 4 else 16):
        raise InvalidBlock(f"subnet {target!r} is wider than /{8 if net.version == 4 else 16}: refusing to block it")
    if net.prefixlen == net.max_prefixlen:
        return _render_client(str(net.network_address))
    if cidr:
        _render_client(str(net.network_address))
        return str(net)
    need_cidr = f"subnet {target!r}: a hash-style map matches only whole "
    if net.version == 4:
        if net.prefixlen % 8:
            raise InvalidBlock(need_cidr + "octets (/8, /16, /24); use a cidr: map for other prefixes")
        return ".".join(str(net.network_address).split(".")[: net.prefixlen // 8])
    # access(5) truncates the client's printed IPv6 address at ':'. That finds our
    # key only if the prefix's groups always print in full: "::" never swallows a
    # prefix group when no two prefix groups in a row are 0 and the last is not.
    groups = [int.from_bytes(net.network_address.packed[i : i + 2], "big") for i in range(0, 16, 2)]
    prefix = groups[: net.prefixlen // 16]
    if net.prefixlen % 16 or prefix[-1] == 0 or any(a == b == 0 for a, b in itertools.pairwise(prefix)):
        raise InvalidBlock(
            need_cidr + "16-bit groups, ending in a non-zero group without two 0 groups in a row; use a cidr: map"
        )
    return ":".join(f"{g:x}" for g in prefix)


def _render_sasl(target: str) -> str:
    # Map source syntax: whitespace splits key from value, '#' starts a comment,
    # a leading space continues the previous line. Names are printable ASCII.
    if not _SASL_OK.fullmatch(target) or target[0] in "#:@" or target.endswith("@"):
        raise InvalidBlock(
            f"SASL user {target!r}: expected 1-255 printable ASCII characters without spaces, "
            "not starting with '#', ':' or '@' and not ending with '@'"
        )
    return target


def reject_text(reason: str) -> str:
    """The REJECT text smtpd sends: printable ASCII, one line, no `$`, `\\`, braces."""
    text = _TEXT_BAD.sub("?", " ".join(reason.split()))[:200]
    return f"blocked by relaywatch: {text}" if text else "blocked by relaywatch"


def render_section(blocks: Iterable[Block], map_type: str) -> list[str]:
    """The managed section's lines, sorted by key; one entry per key (the alphabetically first reason)."""
    entries: dict[str, str] = {}
    for key, reason in sorted((render_key(b.kind, b.target, map_type), b.reason) for b in blocks):
        entries.setdefault(key, f"{key} REJECT {reject_text(reason)}")
    return [BEGIN, *entries.values(), END]
