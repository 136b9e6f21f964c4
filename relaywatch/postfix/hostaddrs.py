"""The mail host's own addresses, which no block may ever cover.

A list manager or a web app that submits through the server's own public
address looks like a client relaying a lot; blocking that address (or a
subnet around it) would stop the server's own mail. The addresses come from
the machine's interfaces (the daemon runs on the mail host), Postfix's
`inet_interfaces` and `proxy_interfaces` (where `postconf` can answer), and
`[allow] own_addresses` (which the pipeline adds). Reading happens here, at the
edge; the Detector gets the result as `never_block`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from relaywatch.core.rules import Network
from relaywatch.model import PostfixError
from relaywatch.postfix.postconf import postconf

log = logging.getLogger("relaywatch.hostaddrs")

INTERFACE_PARAMS = ("inet_interfaces", "proxy_interfaces")
_KEYWORDS = frozenset({"all", "loopback-only", "localhost"})  # "all": the interfaces; the others are loopback


def parse_fib_trie(text: str) -> set[str]:
    """IPv4 addresses of this host's interfaces from /proc/net/fib_trie (its `/32 host LOCAL` leaves)."""
    found: set[str] = set()
    last = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            last = stripped[4:]
        elif stripped.startswith("/32 host LOCAL") and last:
            found.add(last)
    return found


def parse_if_inet6(text: str) -> set[str]:
    """IPv6 addresses of this host's interfaces from /proc/net/if_inet6 (32 hex digits first on each line)."""
    found: set[str] = set()
    for line in text.splitlines():
        field = line.split(" ", 1)[0]
        if len(field) == 32:
            try:
                found.add(ipaddress.IPv6Address(int(field, 16)).compressed)
            except ValueError:
                continue
    return found


def interface_addresses(proc: str | Path = "/proc/net") -> set[str]:
    """Every address configured on this machine (Linux /proc); empty, with a warning, where unreadable."""
    found: set[str] = set()
    for name, parse in (("fib_trie", parse_fib_trie), ("if_inet6", parse_if_inet6)):
        try:
            found |= parse(Path(proc, name).read_text())
        except OSError as exc:
            log.warning("cannot read %s (%s): the host's own addresses may be blocked unless listed in "
                        "[allow] own_addresses", Path(proc, name), exc.strerror or exc)
    return found


def postfix_addresses(params: dict[str, str], resolve: bool = True) -> set[str]:
    """The addresses named in `inet_interfaces` and `proxy_interfaces` (`[::1]` and names as Postfix writes them).

    Names are resolved when `resolve` (the mail host itself); keywords such as
    "all" add nothing here (the interfaces are read separately)."""
    found: set[str] = set()
    for name in INTERFACE_PARAMS:
        for item in re.split(r"[\s,]+", params.get(name, "")):
            item = item.strip("[]")
            if not item or item.lower() in _KEYWORDS:
                continue
            try:
                found.add(ipaddress.ip_address(item).compressed)
            except ValueError:
                if resolve:
                    found |= _resolve(item, name)
    return found


def _resolve(host: str, param: str) -> set[str]:
    import socket  # a replay resolves nothing: it starts without socket

    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError as exc:
        log.warning("%s names %s, which does not resolve (%s): list its addresses in [allow] own_addresses",
                    param, host, exc)
        return set()


def _postconf_addresses(config_directory: str | None, resolve: bool) -> set[str]:
    try:
        return postfix_addresses(postconf(config_directory, INTERFACE_PARAMS), resolve)
    except PostfixError as exc:
        # postconf refuses a configuration whose inet_interfaces are not on this machine (another host's)
        report = log.warning if "parameter inet_interfaces" in str(exc) else log.debug
        report("no inet_interfaces/proxy_interfaces from postconf (%s): list the mail host's own addresses in"
               " [allow] own_addresses", exc)
        return set()


def as_networks(addresses: Iterable[str]) -> tuple[Network, ...]:
    """One network per address (/32, /128), sorted for stable output."""
    nets = {ipaddress.ip_network(a) for a in addresses}
    return tuple(sorted(nets, key=lambda n: (n.version, n)))


def for_daemon(config_directory: str | None, proc: str | Path = "/proc/net") -> tuple[Network, ...]:
    """On the mail host: its interfaces and Postfix's interface parameters."""
    nets = as_networks(interface_addresses(proc) | _postconf_addresses(config_directory, resolve=True))
    log.info("never blocked, the host's own addresses: %s (and [allow] own_addresses)",
             ", ".join(n.compressed for n in nets) or "none found")
    return nets


def for_replay(config_directory: str | None) -> tuple[Network, ...]:
    """Replaying a log, perhaps of another host: the literal addresses Postfix's configuration in
    `config_directory` names (where there is one); not this machine's interfaces."""
    return as_networks(_postconf_addresses(config_directory, resolve=False) if config_directory else ())
