"""What a replay found, as admins read it: a summary, the decisions, the top tables.

The JSON shape is a contract other tools rely on: add fields, never rename.
"""

from __future__ import annotations

import heapq
import ipaddress
import json
from dataclasses import dataclass, field

from relaywatch.core.inference import DeclinedDomain, InferredDomain
from relaywatch.core.netaddr import address
from relaywatch.core.rules import Network, in_network
from relaywatch.model import Decision, JSONObject, LocalRelayed, RelayDenied, Relayed, Totals
from relaywatch.reports.timeline import Timeline, keep_largest
from relaywatch.wording import describe, iso

TOP = 10


class BoundedCounter:
    """Exact counts until `cap` keys, then the smaller half is dropped.

    A flood over a million IPv6 addresses must not grow memory; the heavy
    hitters the top tables show survive every pruning.
    """

    __slots__ = ("_within", "approximate", "cap", "counts")

    def __init__(self, cap: int = 20_000) -> None:
        self.cap = cap
        self.counts: dict[str, int] = {}
        self.approximate = False
        self._within: _Within | None = None  # what `within` read from the counts, until they change

    def add(self, key: str, n: int = 1) -> None:
        self._within = None
        counts = self.counts
        counts[key] = counts.get(key, 0) + n
        if len(counts) > self.cap:
            self.counts = keep_largest(counts, self.cap // 2)
            self.approximate = True

    def top(self, n: int = TOP) -> list[tuple[str, int]]:
        """The `n` largest counts, ties by key: compared as (-count, key) tuples in C, not through a
        Python key function called for each of up to `cap` keys."""
        return [(key, -neg) for neg, key in heapq.nsmallest(n, [(-c, key) for key, c in self.counts.items()])]

    def within(self, net: Network) -> int:
        """The sum of the counts of the keys that are addresses inside `net` (`rules.in_network`'s answer
        for each key). Each key is read once for all the networks asked about: a report asks for each
        subnet block, and 20,000 IPv6 clients read again per block cost more than the rest of the report."""
        within = self._within
        if within is None or within.counts is not self.counts:  # changed by add, or replaced (digest)
            within = self._within = _Within(self.counts)
        return within.total(net)


class _Within:
    """A counter's keys read as addresses (netaddr), and their counts summed per network of each
    prefix length asked about; the keys netaddr does not read as a number are asked `in_network`."""

    __slots__ = ("counts", "numbers", "others", "sums")

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.numbers: list[tuple[int, int, int]] = []  # (version, address as an integer, count)
        self.others: list[tuple[str, int]] = []  # scoped addresses, and what is no address
        for key, n in counts.items():
            a = address(key)
            if a is None:
                self.others.append((key, n))
            else:
                self.numbers.append((a[0], a[1], n))
        self.sums: dict[tuple[int, int], dict[int, int]] = {}  # (version, host bits) -> network -> count

    def total(self, net: Network) -> int:
        version, shift = net.version, net.max_prefixlen - net.prefixlen
        sums = self.sums.get((version, shift))
        if sums is None:
            sums = self.sums[(version, shift)] = {}
            for v, a, n in self.numbers:
                if v == version:
                    sums[a >> shift] = sums.get(a >> shift, 0) + n
        return sums.get(int(net.network_address) >> shift, 0) + sum(
            n for key, n in self.others if in_network(key, net))


class Tally:
    """The pflogsumm-like tables of relayed mail: a pipeline sink (replay plugs it in)."""

    def __init__(self) -> None:
        self.clients = BoundedCounter()
        self.senders = BoundedCounter()
        self.domains = BoundedCounter()
        self.sasl_users = BoundedCounter()
        self.relay_denied = BoundedCounter()

    def fact(self, fact: Relayed | LocalRelayed) -> None:
        if type(fact) is Relayed:  # the tables are about clients: not mail submitted on the host
            self.add_relayed(fact)

    def denied(self, fact: RelayDenied) -> None:
        self.relay_denied.add(fact.client)

    def decision(self, d: Decision) -> None:
        """Decisions are not tabled: the report lists them."""

    def add_relayed(self, fact: Relayed) -> None:
        self.clients.add(fact.client)
        self.senders.add(fact.sender or "<>")
        if fact.domain:
            self.domains.add(fact.domain)
        if fact.sasl_user:
            self.sasl_users.add(fact.sasl_user)

    @property
    def approximate(self) -> bool:
        """Some table dropped keys at its cap: its counts are lower bounds."""
        return any(c.approximate for c in (self.clients, self.senders, self.domains, self.sasl_users,
                                           self.relay_denied))

    def tables(self) -> dict[str, list[tuple[str, int]]]:
        return {
            "clients": self.clients.top(),
            "senders": self.senders.top(),
            "domains": self.domains.top(),
            "sasl_users": self.sasl_users.top(),
            "relay_denied": self.relay_denied.top(),
        }


@dataclass
class ReplayResult:
    """Everything a replay found, for the text, JSON and HTML reports."""

    totals: Totals
    messages: int
    decisions: list[Decision]
    tally: Tally
    timeline: Timeline = field(default_factory=Timeline)
    # where the local domains came from (option, config, postfix, log) and, from the log, which and why
    local_domains_source: str = ""
    local_domains_detail: str = ""
    inferred_local_domains: list[InferredDomain] = field(default_factory=list)
    # handed to a private next hop but not taken for local, and why (listed in JSON only when there are any)
    declined_local_domains: list[DeclinedDomain] = field(default_factory=list)
    # syslog host -> the lines of Postfix read from it (several: a fleet's logs, or a central syslog file)
    hosts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stopped:
    """What a block would have stopped: `after` of the target's `total` relayed recipients came after it."""

    after: int
    total: int

    def text(self) -> str:
        pct = 100 * self.after / self.total if self.total else 0.0
        return f"would have stopped {self.after:,} of {self.total:,} relayed recipients, {pct:.1f} %"


def stopped(result: ReplayResult, d: Decision, timeline: Timeline | None = None) -> Stopped | None:
    """How much of a blocked target's relayed mail was queued after the block (replay only: the
    daemon's reports have no per-message record). `timeline`: the one that saw the facts, if not
    `result.timeline`."""
    after = (timeline or result.timeline).after_block(d)
    if after is None:
        return None
    tally = result.tally
    if d.kind == "client":
        total = tally.clients.counts.get(d.target, 0)
    elif d.kind == "sasl_user":
        total = tally.sasl_users.counts.get(d.target, 0)
    else:
        total = tally.clients.within(ipaddress.ip_network(d.target, strict=False))
    return Stopped(after, max(total, after))  # a pruned table can undercount the total


def decision_dict(d: Decision, stop: Stopped | None = None) -> JSONObject:
    return {
        "stopped": None if stop is None else {"after": stop.after, "of": stop.total},
        "time": iso(d.time),
        "action": d.action,
        "kind": d.kind,
        "target": d.target,
        "rule": d.rule,
        "count": d.count,
        "window_s": d.window_s,
        "clients": d.clients,
        "evidence": list(d.evidence),
        "sample_qids": list(d.sample_qids),
        "hosts": list(d.hosts),
    }


def to_json(result: ReplayResult) -> str:
    t = result.totals
    return json.dumps(
        {
            "lines": t.lines,
            "unparsed": t.unparsed,
            "messages": result.messages,
            "relayed": t.relayed,
            "relay_denied": t.relay_denied,
            "local_relayed": t.local_relayed,
            "forged": t.forged,
            "first_time": iso(t.first_time) if t.first_time is not None else None,
            "last_time": iso(t.last_time) if t.last_time is not None else None,
            "decisions": [decision_dict(d, stopped(result, d)) for d in result.decisions],
            "top": {name: [{"key": k, "count": n} for k, n in rows] for name, rows in result.tally.tables().items()},
            "local_domains": {
                "source": result.local_domains_source,
                "detail": result.local_domains_detail,
                "inferred": [{"domain": i.domain, "host": i.host, "reason": i.reason.value, "evidence": i.evidence}
                             for i in result.inferred_local_domains],
            } | ({"declined": [{"domain": i.domain, "host": i.host, "reason": i.reason.value, "evidence": i.evidence}
                               for i in result.declined_local_domains]} if result.declined_local_domains else {}),
            "hosts": [{"host": h, "postfix_lines": n} for h, n in sorted(result.hosts.items())],
        },
        indent=2,
    )


_SOURCES = {"option": "from --local-domain", "config": "from [postfix] local_domains", "postfix": "from Postfix"}


def _local_domains_text(result: ReplayResult) -> list[str]:
    """Where the local domains came from; when from the log, each inferred domain and why."""
    source = result.local_domains_source
    if not source:
        return []
    if source in _SOURCES:
        return [f"  local domains {_SOURCES[source]} ({result.local_domains_detail})"]
    inferred = result.inferred_local_domains
    out = [f"  local domains: none known ({result.local_domains_detail}); {len(inferred)} inferred from the log"
           + (":" if inferred else " (give --local-domain)")]
    for i in inferred[:TOP * 3]:
        out.append(f"    {i.host + ': ' if i.host else ''}{i.domain}: {i.evidence}")
    if len(inferred) > TOP * 3:
        out.append(f"    ... and {len(inferred) - TOP * 3} more (--format json lists them all)")
    declined = result.declined_local_domains
    if declined:
        out.append(f"  {len(declined)} not inferred local, though handed to a private next hop:")
        out += [f"    {i.host + ': ' if i.host else ''}{i.domain}: {i.evidence}" for i in declined[:TOP * 3]]
        if len(declined) > TOP * 3:
            out.append(f"    ... and {len(declined) - TOP * 3} more (--format json lists them all)")
    return out


def hosts_text(result: ReplayResult) -> str | None:
    """Which hosts a replay of several hosts' logs (or a central syslog file) read; None for one host."""
    if len(result.hosts) < 2:
        return None
    return (f"{len(result.hosts)} hosts, replayed as one fleet: "
            + ", ".join(f"{h} ({n:,} Postfix lines)" for h, n in sorted(result.hosts.items())))


def to_text(result: ReplayResult, dry_run: bool = True) -> str:
    t = result.totals
    out = []
    span = (f"{iso(t.first_time)} .. {iso(t.last_time)}" if t.first_time is not None and t.last_time is not None
            else "no timestamps")
    out.append(f"relaywatch replay: {span}")
    out.append(
        f"  {t.lines:,} lines, {t.unparsed:,} unparsed, {result.messages:,} messages, "
        f"{t.relayed:,} relayed recipients, {t.relay_denied:,} relay attempts refused"
        + (f", {t.forged:,} forged journal records ignored" if t.forged else "")
    )
    if (fleet := hosts_text(result)) is not None:
        out.append(f"  {fleet}")
    out.extend(_local_domains_text(result))
    out.append("")
    verb = "would " if dry_run else ""
    out.append(f"Decisions ({len(result.decisions)}){' - dry run, nothing was changed' if dry_run else ''}:")
    if not result.decisions:
        out.append("  none")
    for d in result.decisions:
        action = f"{verb}block" if d.action == "block" else d.action
        out.append(f"  {iso(d.time)}  {action:<11} {d.kind:<11} {d.target:<22} {describe(d)}")
        if (stop := stopped(result, d)) is not None:
            out.append(f"      {stop.text() if dry_run else stop.text().replace('would have stopped', 'stopped')}"
                       " (queued at or after the block, in this log)")
        if len(result.hosts) > 1 and d.hosts:
            out.append(f"      evidence from host{'s' if len(d.hosts) > 1 else ''} {', '.join(d.hosts)}")
        for line in d.evidence[-2:]:
            out.append(f"      | {line[:160]}")
    out.append("")
    from relaywatch.reports.sparks import text_block  # the text report's only: a JSON one starts without it

    out.append(text_block(result.timeline).rstrip("\n"))
    titles = {
        "clients": "Top relaying clients",
        "senders": "Top senders of relayed mail",
        "domains": "Top destination domains",
        "sasl_users": "Top SASL users (relayed)",
        "relay_denied": "Top clients refused relay",
    }
    for name, rows in result.tally.tables().items():
        out.append("")
        out.append(f"{titles[name]}:")
        if not rows:
            out.append("  none")
        for key, n in rows:
            out.append(f"  {n:>8,}  {key}")
    if t.unparsed_samples:
        out.append("")
        out.append("First unparsed lines:")
        out.extend(f"  {line}" for line in t.unparsed_samples)
    return "\n".join(out) + "\n"
