"""What happened when: relayed recipients per minute (or hour), for everyone and the heavy hitters.

Pure and stdlib only. The pipeline feeds it every fact and decision; the text and HTML
reports read plain data back. Memory is bounded whatever the log: keys are ranked by
a capped counter, only the few leaders get a per-bin series, and a span longer than
two days of minutes is re-binned to hours (then days), so a flood of a million IPv6
clients or a year of logs stays a few megabytes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import TYPE_CHECKING, TypeVar, cast

from relaywatch.core.netaddr import address, is_global
from relaywatch.core.rules import DEFAULT_RULES, Rule
from relaywatch.model import Decision, LocalRelayed, RelayDenied, Relayed
from relaywatch.reports.blockwatch import BlockWatch
from relaywatch.wording import why

if TYPE_CHECKING:  # built by the readers below, for a text or HTML report only (a JSON replay never loads them)
    from relaywatch.reports.panelrows import DomainStatus, Series, Threshold

BIN_SIZES = (60, 3600, 86400)
MAX_BINS = 2 * 24 * 60  # two days of minutes; longer spans switch to hours
RANK_CAP = 4096  # keys ranked per dimension before the smaller half is dropped
SERIES_KEYS = 12  # keys per dimension that keep a per-bin series
STATUS_CAP = 4096  # destination domains with delivery status counts
MAX_MARKERS = 1000


@dataclass(frozen=True, slots=True)
class Marker:
    """A block, alert or unblock on the time axis."""

    time: float
    action: str
    kind: str
    target: str
    rule: str = ""
    detail: str = ""
    evidence: tuple[str, ...] = ()


K = TypeVar("K", bound=Hashable)


def keep_largest(counts: dict[K, int], keep: int) -> dict[K, int]:
    """`dict(sorted(counts.items(), key=count, reverse=True)[:keep])` without a Python call per key: the
    same keys in the same order (that sort is stable, so the next pruning's ties depend on the order).
    The keep-th largest count is the floor: every key above it stays, ordered by count, then the first
    keys at the floor in insertion order until `keep`. A capped counter prunes with it."""
    keep = min(keep, len(counts))
    if keep <= 0:
        return {}
    floor = sorted(counts.values(), reverse=True)[keep - 1]
    above = [kv for kv in counts.items() if kv[1] > floor]
    above.sort(key=itemgetter(1), reverse=True)
    out = dict(above)
    need = keep - len(out)
    for key, n in counts.items():
        if n == floor:
            out[key] = n
            need -= 1
            if not need:
                break
    return out


def _address(ip: str) -> tuple[int, int] | None:
    """(integer, version) of an address a subnet rule may group; None as in `grouping.network_of`."""
    a = address(ip)
    if a is None:
        return _scoped(ip)
    return (a[1], a[0]) if is_global(a[0], a[1]) else None


@lru_cache(maxsize=256)
def _scoped(ip: str) -> tuple[int, int] | None:
    """What netaddr does not read as a number (a scoped address, or none): ipaddress itself."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return (int(addr), addr.version) if addr.is_global else None


class _Ranked:
    """Heavy hitters of one dimension; the leaders also get a per-bin series."""

    __slots__ = ("counts", "floor", "missed", "series")

    def __init__(self) -> None:
        self.counts: dict[Hashable, int] = {}
        self.series: dict[Hashable, dict[int, int]] = {}
        self.missed: dict[Hashable, int] = {}
        self.floor = 0

    def add(self, key: Hashable, b: int) -> None:
        counts = self.counts
        n = counts[key] = counts.get(key, 0) + 1
        if len(counts) > RANK_CAP:
            self.counts = counts = keep_largest(counts, RANK_CAP // 2) | {k: counts[k] for k in self.series}
        s = self.series.get(key)
        if s is None:
            if len(self.series) >= SERIES_KEYS and not self._make_room(n):
                return
            s = self.series[key] = {}
            self.missed[key] = n - 1
        s[b] = s.get(b, 0) + 1

    def _make_room(self, n: int) -> bool:
        if n <= self.floor:
            return False
        weakest = min(self.series, key=self.counts.__getitem__)
        self.floor = self.counts[weakest]
        if n <= self.floor:
            return False
        del self.series[weakest], self.missed[weakest]
        return True  # the floor stays a lower bound: every key left, and the newcomer, count more

    def rebin(self, factor: int) -> None:
        self.series = {k: _rebin(s, factor) for k, s in self.series.items()}


def _rebin(series: dict[int, int], factor: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for b, n in series.items():
        out[b // factor] = out.get(b // factor, 0) + n
    return out


class Timeline:
    """Collects the facts and decisions of a replay (or a daemon's period) for plotting: a pipeline sink."""

    def __init__(self, rules: Iterable[Rule] = DEFAULT_RULES, bin_s: int = BIN_SIZES[0], panels: bool = True) -> None:
        """`bin_s`: the finest bin, one of BIN_SIZES (3600 for counts known only per hour).
        `panels` False: only what a block would have stopped is counted (a JSON report plots
        nothing, and the panels cost a tenth of a replay)."""
        if bin_s not in BIN_SIZES:
            raise ValueError(f"bin_s must be one of {BIN_SIZES}")
        self.rules = tuple(rules)
        prefixes = {(24, 64), (16, 48)} | {(r.prefix_v4, r.prefix_v6) for r in self.rules if r.prefix_v4}
        self.prefixes = sorted(prefixes, reverse=True)
        self.bin_s = bin_s
        self._dims = {d: _Ranked() for d in self.dims()}
        self._relayed: dict[int, int] = {}
        self._refused: dict[int, int] = {}
        self._status: dict[str, list[int]] = {}
        self._markers: list[Marker] = []
        self.markers_dropped = 0
        self.blocks = BlockWatch()
        self._observed = 0  # relayed recipients seen one by one (none: counts known only in aggregate)
        self._first: int | None = None
        self._last = 0
        self.panels = panels

    def dims(self) -> list[str]:
        """Dimension names, in panel order: net:24/64 is clients grouped into /24 (IPv6 /64) networks."""
        nets = [f"net:{p4}/{p6}" for p4, p6 in self.prefixes]
        return ["client", *nets, "sender", "domain", "sasl_user", "relay_denied"]

    # --- feeding ---------------------------------------------------------------

    def observe(self, fact: Relayed | RelayDenied) -> None:
        if isinstance(fact, RelayDenied):
            self.denied(fact)
        else:
            self.fact(fact)

    def denied(self, fact: RelayDenied) -> None:
        if not self.panels:
            return
        b = self._bin(fact.time)
        self._refused[b] = self._refused.get(b, 0) + 1
        self._dims["relay_denied"].add(fact.client, b)

    def fact(self, fact: Relayed | LocalRelayed) -> None:
        if type(fact) is not Relayed:  # no client: the panels are about clients
            return
        if not self.panels:
            self._observed += 1
            if self.blocks.watched:
                self.blocks.fact(fact)
            return
        b = self._bin(fact.time)
        dims = self._dims
        self._relayed[b] = self._relayed.get(b, 0) + 1
        self._observed += 1
        if self.blocks.watched:
            self.blocks.fact(fact)
        dims["client"].add(fact.client, b)
        addr = _address(fact.client)
        if addr is not None:
            n, version = addr
            bits = 32 if version == 4 else 128
            for p4, p6 in self.prefixes:
                shift = bits - (p4 if version == 4 else p6)
                dims[f"net:{p4}/{p6}"].add((version, n >> shift << shift), b)
        dims["sender"].add(fact.sender or "<>", b)
        if fact.sasl_user:
            dims["sasl_user"].add(fact.sasl_user, b)
        if fact.domain:
            dims["domain"].add(fact.domain, b)
            self._count_status(fact.domain, fact.status)

    def after_block(self, d: Decision) -> int | None:
        """Relayed recipients of `d`'s target queued at or after the block `d`; None when not known
        (not a block, too many blocks, or a timeline fed only aggregate counts)."""
        return self.blocks.after(d) if self._observed else None

    def add_counts(self, t: float, relayed: int = 0, refused: int = 0) -> None:
        """Counts known only in aggregate (a daemon's hourly record of a day), added to the bin of `t`.
        They feed the overall series only: no key is known, so no panel of leaders."""
        b = self._bin(t)
        if relayed:
            self._relayed[b] = self._relayed.get(b, 0) + relayed
        if refused:
            self._refused[b] = self._refused.get(b, 0) + refused

    def add_status(self, domain: str, relayed: int, deferred: int = 0, bounced: int = 0) -> None:
        """A destination's relayed recipients and first attempts deferred and bounced, in aggregate."""
        row = self._status_row(domain)
        row[0] += relayed
        row[1] += deferred
        row[2] += bounced

    def decision(self, d: Decision) -> None:
        """A block, alert or unblock (the daemon records unblocks as decisions) on the time axis."""
        self.blocks.decision(d)
        self._mark(Marker(d.time, d.action, d.kind, d.target, d.rule, why(d), d.evidence))

    def _mark(self, m: Marker) -> None:
        self._bin(m.time)
        if len(self._markers) < MAX_MARKERS:
            self._markers.append(m)
        else:
            self.markers_dropped += 1

    def _count_status(self, domain: str, status: str) -> None:
        row = self._status_row(domain)
        row[0] += 1
        if status == "deferred":
            row[1] += 1
        elif status == "bounced":
            row[2] += 1

    def _status_row(self, domain: str) -> list[int]:
        row = self._status.get(domain)
        if row is None:
            if len(self._status) >= STATUS_CAP:
                keep = sorted(self._status.items(), key=lambda kv: kv[1][0], reverse=True)[: STATUS_CAP // 2]
                self._status = dict(keep)
            row = self._status[domain] = [0, 0, 0]
        return row

    def _bin(self, t: float) -> int:
        b = int(t // self.bin_s)
        if self._first is None:
            self._first = self._last = b
        elif b < self._first:
            self._first = b
        elif b > self._last:
            self._last = b
        if self._last - self._first >= MAX_BINS and self.bin_s != BIN_SIZES[-1]:
            self._coarsen()
            return int(t // self.bin_s)
        return b

    def _coarsen(self) -> None:
        new = BIN_SIZES[BIN_SIZES.index(self.bin_s) + 1]
        factor = new // self.bin_s
        self.bin_s = new
        self._relayed = _rebin(self._relayed, factor)
        self._refused = _rebin(self._refused, factor)
        for ranked in self._dims.values():
            ranked.rebin(factor)
        assert self._first is not None
        self._first //= factor
        self._last //= factor
        if self._last - self._first >= MAX_BINS and self.bin_s != BIN_SIZES[-1]:
            self._coarsen()

    # --- reading -----------------------------------------------------------------

    def tracked_keys(self) -> int:
        """Everything that grows with distinct keys: what the memory bound is about."""
        ranked = sum(len(r.counts) + len(r.series) for r in self._dims.values())
        return ranked + len(self._status) + len(self._markers)

    def span(self) -> tuple[float, float] | None:
        """Start of the first bin and end of the last, in seconds since the epoch."""
        if self._first is None:
            return None
        return float(self._first * self.bin_s), float((self._last + 1) * self.bin_s)

    def _dense(self, series: dict[int, int]) -> list[int]:
        if self._first is None:
            return []
        return [series.get(b, 0) for b in range(self._first, self._last + 1)]

    def relayed(self) -> list[int]:
        """Relayed recipients per bin, first bin to last."""
        return self._dense(self._relayed)

    def refused(self) -> list[int]:
        """Relay attempts refused per bin."""
        return self._dense(self._refused)

    def top(self, dim: str, n: int = 5) -> list[Series]:
        """The `n` keys with the most counts that have a series, heaviest first."""
        from relaywatch.reports.panelrows import Series

        ranked = self._dims[dim]
        keys = sorted(ranked.series, key=lambda k: (-ranked.counts[k], self._label(dim, k)))[:n]
        return [Series(self._label(dim, k), ranked.counts[k], ranked.missed[k], self._dense(ranked.series[k]))
                for k in keys]

    def _label(self, dim: str, key: Hashable) -> str:
        if not dim.startswith("net:"):
            return str(key)
        version, n = cast(tuple[int, int], key)
        p4, p6 = dim[4:].split("/")
        return ipaddress.ip_network((n, int(p4) if version == 4 else int(p6))).compressed

    def thresholds(self, dim: str) -> list[Threshold]:
        """The rules that count `dim`, each with its threshold spread evenly over one bin."""
        from relaywatch.reports.panelrows import Threshold

        out = []
        for r in self.rules:
            rule_dim = f"net:{r.prefix_v4}/{r.prefix_v6}" if r.prefix_v4 else r.dim
            if rule_dim == dim:
                out.append(Threshold(r.name, r.action, r.threshold, r.window_s, r.min_clients,
                                     r.threshold * self.bin_s / r.window_s))
        return out

    def markers(self) -> list[Marker]:
        return sorted(self._markers, key=lambda m: m.time)

    def delivery(self, n: int = 10) -> list[DomainStatus]:
        """Destination domains by relayed recipients, with their first attempt's status counts."""
        from relaywatch.reports.panelrows import DomainStatus

        rows = sorted(self._status.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]
        return [DomainStatus(d, *counts) for d, counts in rows]

    def most_deferred(self, n: int = 10, at_least: int = 10) -> list[DomainStatus]:
        """Domains deferring most of our mail: often a sign we are on their blocklist."""
        from relaywatch.reports.panelrows import DomainStatus

        rows = [DomainStatus(d, *c) for d, c in self._status.items() if c[0] >= at_least and c[1]]
        return sorted(rows, key=lambda r: (-r.deferred_ratio, -r.relayed, r.domain))[:n]

