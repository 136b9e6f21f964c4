"""The correlator on each deployment family's log (tests/data/deployments, expectations inside).

Every file runs in each of its modes: nothing known (the correlator infers local domains from
the log) and/or a known list. The relayed recipients, who they are credited to, and the inferred
domains must be exactly those written in the file.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from relaywatch.core.correlate import Correlator
from relaywatch.core.destinations import LocalDomains
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.model import Event, ProxyAccept, Relayed

DATA = Path(__file__).parent / "data" / "deployments"
_PROXY_ACCEPT = re.compile(r"NOQUEUE: proxy-accept: END-OF-MESSAGE from (?P<name>[^\s\[]*)\[(?P<addr>[^\]]+)\]: "
                           r"250 .*?queued as (?P<qid>\w+);")


def syslog_host(line: str) -> str:
    parts = line.split(maxsplit=4)
    return parts[1] if parts[0][:1].isdigit() else parts[3]


def events(path: Path) -> list[Event]:
    """The file's events. Until the parser reads them itself, `proxy-accept` lines become
    ProxyAccept events and every event gets its syslog host here."""
    parser = LineParser(YearResolver(2025))
    out = []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        event = parser.parse(line)
        m = _PROXY_ACCEPT.search(line)
        if m is not None and type(event) is not ProxyAccept:
            t = datetime.fromisoformat(line.split()[0]).timestamp()
            event = ProxyAccept(t, m["qid"], m["addr"], m["name"], None)
        if event is None or type(event).__name__ == "Unparsed":
            continue
        out.append(event if event.host else replace(event, host=syslog_host(line)))
    return out


def run(evts: list[Event], correlator: Correlator) -> list[Relayed]:
    facts = []
    for event in evts:
        fact = correlator.feed(event)
        facts += correlator.take_released()
        if type(fact) is Relayed:
            facts.append(fact)
    correlator.finish()
    return facts + correlator.take_released()


def cases():
    for path in sorted(DATA.glob("*.log")):
        header = [line[2:] for line in path.read_text().splitlines() if line.startswith("# ")]
        modes = next(h for h in header if h.startswith("modes:")).split()[1:]
        for mode in modes:
            yield pytest.param(path, mode, id=f"{path.stem}-{mode.partition('=')[0]}")


@pytest.mark.parametrize("path, mode", list(cases()))
def test_each_deployment_is_credited_as_written(path, mode):
    text = path.read_text()
    name, _, domains = mode.partition("=")
    expected = set()
    for tag, fields in re.findall(r"^# relayed(\[\w+\])?: (.*)$", text, re.M):
        if tag in ("", f"[{name}]"):
            qid, rcpt, client, sasl = fields.split()
            expected.add((qid, rcpt, client, None if sasl == "-" else sasl))
    correlator = Correlator(LocalDomains(domains.split(","), known=True) if domains else LocalDomains())
    facts = run(events(path), correlator)
    got = [(f.qid, f.recipient, f.client, f.sasl_user) for f in facts]
    assert sorted(got) == sorted(expected)  # each once, to the right client
    if name == "unknown":
        inferred = {(i.domain, i.reason.value) for i in correlator.inferred()}
        assert inferred == set(re.findall(r"^# inferred: (\S+) (\S+)$", text, re.M))
    else:
        assert correlator.inferred() == []


def test_every_family_is_covered():
    names = {p.stem for p in DATA.glob("*.log")}
    assert {"gateway-relay-domains", "backup-mx-primary-down", "mailcow-lmtp", "content-filter-off-loopback",
            "amavis-race", "proxy-filter", "central-syslog"} <= names
