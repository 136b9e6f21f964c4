"""Fuzz parse -> correlate -> decide -> report, and check the invariants that keep relaywatch safe.

    python bench/fuzz.py                          # atheris (coverage-guided) if installed, 200,000 inputs
    python bench/fuzz.py --runs 2000000 --seconds 600
    python bench/fuzz.py --engine hypothesis --runs 20000

Inputs are logs of Postfix-like lines: (1) templates of real Postfix lines whose attacker-written
fields (HELO, envelope addresses, message-id, Subject, remote replies, non-SMTP command tails)
are filled with hostile text: field-looking fragments, brackets, quotes and the canary addresses
8.8.8.8 and 2001:4860:4860::8888, which appear nowhere else; (2) real lines from tests/data/corpus
and tests/data/golden, mutated (fragments inserted, cut, doubled, bytes flipped); (3) raw bytes.

Invariants, checked on every input:
  - nothing raises (parser, correlator, detector, text/JSON/HTML reports);
  - an event's client and original client are canonical IP addresses, and in (1) neither they
    nor the relay address is ever a canary; no client or subnet decision ever targets a canary or a network holding one
    (the rules run with threshold 1, so any fact about a canary would be decided on);
  - every block target is a key postfix.render_key accepts (client, subnet: in a cidr map; SASL
    names: accepted, or refused with InvalidBlock, never anything else);
  - the crafted worst cases (8 KB runs of '<', '>', '"', ', relay=', '>, ' ... in every field)
    parse in well under a second each.

Prints the lines fuzzed, the invariant violations (exceptions; the first ones with their input,
also saved under bench/fuzz-findings/), and the slowest line's parse time. Exit status 1 on any
violation. Tests import the generators (tests/test_hostile_fuzz.py).
"""

from __future__ import annotations

import argparse
import atexit
import csv
import dataclasses
import hashlib
import ipaddress
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Appended, not prepended: an installed relaywatch (the compiled one that .ci/compiled tests) wins over
# this checkout, which is still found when nothing is installed.
sys.path.append(str(ROOT))

CANARY4, CANARY6 = "8.8.8.8", "2001:4860:4860::8888"
CANARY_NETS = (ipaddress.ip_network(CANARY4), ipaddress.ip_network(CANARY6))
CLIENTS = ("81.2.69.142", "81.2.69.160", "81.2.70.1", "2a0b:4000:1::5", "2a0b:4000:1:0:1::7", "127.0.0.1")
RELAYS = ("198.51.100.25", "2a00:1450:400c:c02::1b", "127.0.0.1")
QIDS = ("4F1C52A0B3", "E89FA2DEDA", "4PbCZy4PWKz3tBr", "3mPVKl0Mhjz7sXv", "0F5383D")
NAMES = ("unknown", "mail.example.net", "8-8-8-8.dyn.example", "localhost", "a.b-c.example")
PROGRAMS = ("smtpd", "submission/smtpd", "postscreen", "cleanup", "qmgr", "smtp", "lmtp", "local", "pickup",
            "postsuper", "error", "amavis/smtp")
# What attackers write into fields: pieces of other fields, and the canaries.
FRAGMENTS = (
    "client=unknown[8.8.8.8]", " from unknown[8.8.8.8]: ",
    "RCPT from x[8.8.8.8]: 554 5.7.1 <a@b>: Relay access denied;",
    "reject: RCPT from unknown[8.8.8.8]: ", "NOQUEUE: ", ": 554 5.7.1 <x@y>: Relay access denied; ",
    ">, relay=mx[8.8.8.8]:25, delay=1, delays=0/0/0/0, dsn=2.0.0, status=sent (250 ok",
    ", relay=mx.evil.example[8.8.8.8]:25, ", ", orig_client=unknown[8.8.8.8]", ", orig_to=<x@y>",
    "to=<ceo@victim.example>", "from=<a@b>", "helo=<x>", " proto=ESMTP ", "sasl_username=boss",
    "4PbCZy4PWKz3tBr: removed", "4F1C52A0B3: removed", "queued as 4PbCZy4PWKz3tBr", "(queue active)",
    "[2001:4860:4860::8888]", "IPv6:2001:4860:4860::8888", "unknown[2001:4860:4860::8888]:25", "[8.8.8.8]:25",
    "8.8.8.8", "Nov 27 06:40:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[8.8.8.8]: ",
    "postfix/smtpd[1]: ", ">", "<", '"', '\\"', ", ", "; ", "[", "]", ":", "=", "(", ")", " ", "?", "\\",
    "\u00e9", "\ufffd", "\x00", "status=sent", "said: ", "uid=0 from=<", "size=1, nrcpt=1 (queue active)",
)
TEMPLATES: tuple[tuple[str, str], ...] = (  # (program, message); {h*} are the attacker's fields
    ("smtpd", "{qid}: client={name}[{ip}]"),
    ("smtpd", "{qid}: client={name}[{ip}]:{port}, sasl_method=PLAIN, sasl_username=alice"),
    ("smtpd", "NOQUEUE: reject: RCPT from {name}[{ip}]: 554 5.7.1 <{h1}>: Relay access denied; from=<{h2}> "
              "to=<{h1}> proto=ESMTP helo=<{h3}>"),
    ("smtpd", "NOQUEUE: reject: RCPT from {name}[{ip}]:{port}: 450 4.7.1 <{h3}>: Helo command rejected: Host not "
              "found; from=<{h2}> to=<{h1}> proto=ESMTP helo=<{h3}>"),
    ("smtpd", "{qid}: reject: DATA from {name}[{ip}]: 550 5.7.1 <DATA>: Data command rejected: {h1}; from=<{h2}> "
              "to=<{h1}> proto=ESMTP helo=<{h3}>"),
    ("smtpd", "warning: non-SMTP command from {name}[{ip}]: {h1}"),
    ("smtpd", "improper command pipelining after EHLO from {name}[{ip}]: {h1}"),
    ("smtpd", "lost connection after RCPT from {name}[{ip}]"),
    ("smtpd", "warning: {name}[{ip}]: SASL LOGIN authentication failed: {h1}, sasl_username={h2}"),
    ("postscreen", "PREGREET 14 after 0.04 from [{ip}]:{port}: {h1}"),
    ("postscreen", "NOQUEUE: reject: RCPT from [{ip}]:{port}: 550 5.7.1 Service unavailable; client [{ip}] "
                   "blocked using zen.spamhaus.org; from=<{h2}>, to=<{h1}>, proto=ESMTP, helo=<{h3}>"),
    ("cleanup", "{qid}: message-id=<{h1}>"),
    ("cleanup", "{qid}: message-id={h1}"),
    ("cleanup", "{qid}: warning: header Subject: {h1} from {name}[{ip}]; from=<{h2}> to=<{h3}> proto=ESMTP "
                "helo=<{h3}>"),
    ("cleanup", "{qid}: reject: header Subject: {h1} from {name}[{ip}]; from=<{h2}> to=<{h3}> proto=ESMTP "
                "helo=<{h3}>: 5.7.1 message content rejected"),
    ("qmgr", "{qid}: from=<{h2}>, size=1200, nrcpt=1 (queue active)"),
    ("qmgr", "{qid}: from=<{h2}>, size=1200, nrcpt=2 (queue active)"),
    ("smtp", "{qid}: to=<{h1}>, relay={rname}[{rip}]:25, delay=1.2, delays=0.1/0/0.6/0.5, dsn=2.0.0, "
             "status=sent (250 2.0.0 Ok: queued as {h2})"),
    ("smtp", "{qid}: to=<{h1}>, orig_to=<{h3}>, relay={rname}[{rip}]:25, delay=1, delays=0/0/0/1, dsn=5.0.0, "
             "status=bounced (host {rname}[{rip}] said: {h2} (in reply to RCPT TO command))"),
    ("smtp", "{qid}: to=<{h1}>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to "
             "{rname}[{rip}]:25: {h2})"),
    ("local", "{qid}: to=<{h1}>, relay=local, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (delivered to "
              "mailbox)"),
    ("pickup", "{qid}: uid=1000 from=<{h2}>"),
    ("qmgr", "{qid}: removed"),
)
SLOTS = ("h1", "h2", "h3")


@dataclasses.dataclass
class Stats:
    inputs: int = 0
    lines: int = 0
    violations: int = 0
    slowest_s: float = 0.0
    slowest_line: str = ""
    findings: list[str] = dataclasses.field(default_factory=list)


STATS = Stats()


# --- inputs -------------------------------------------------------------------------------


def corpus_lines() -> list[str]:
    """Real lines: the public corpus, the golden files, whyscream's messages given an envelope."""
    out: list[str] = []
    data = ROOT / "tests" / "data"
    for path in sorted([*(data / "corpus").glob("*.log"), *(data / "golden").glob("*.log")]):
        if path.name.startswith("whyscream"):
            continue
        out += [line for line in path.read_text(errors="replace").splitlines() if line and not line.startswith("#")]
    with open(data / "corpus" / "whyscream-postfix-grok-messages.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            out.append(f"Nov 27 06:40:00 mx postfix/{row['postfix_program']}[123]: {row['message']}")
    return out


def envelope(program: str, message: str, n: int) -> str:
    stamp = f"2026-11-27T06:{40 + n // 60 % 20:02d}:{n % 60:02d}.{n:06d}+00:00"
    return f"{stamp} mx postfix/{program}[{4000 + n % 7}]: {message}"


def fill(template: tuple[str, str], fields: dict[str, str], n: int) -> str:
    program, message = template
    return envelope(program, message.format(**fields), n)


def worst_cases() -> Iterator[tuple[str, str]]:
    """(what, line): 8 KB of each pathological run in each attacker field of each template."""
    runs = ("<", ">", '"', ", relay=", ">, ", ">, relay=", "[", "]", ": ", "\\\"", " from unknown[1.2.3.4]",
            ", relay=x[1.2.3.4]:25, delay=1, delays=0/0/0/0, dsn=2.0.0, status=sent (", ">: Relay access denied",
            "a", " ")
    base = {"qid": QIDS[0], "name": "unknown", "ip": CLIENTS[0], "port": "25", "rname": "mx", "rip": RELAYS[0]}
    for run in runs:
        for t, template in enumerate(TEMPLATES):
            for slot in SLOTS:
                if "{" + slot + "}" not in template[1]:
                    continue
                fields = {**base, **{s: "x@y" for s in SLOTS}}
                fields[slot] = run * (8000 // len(run) // template[1].count("{" + slot + "}"))
                line = fill(template, fields, 1)[:8000]
                yield f"{run!r} x {len(fields[slot]) // len(run)} in {template[0]} template {t} {slot}", line


# --- the invariants ------------------------------------------------------------------------


class Violation(AssertionError):
    pass


def _canonical(addr: str | None) -> bool:
    if addr is None:
        return True
    try:
        return ipaddress.ip_address(addr).compressed == addr
    except ValueError:
        return False


def _is_canary(target: str) -> bool:
    try:
        net = ipaddress.ip_network(target, strict=False)
    except ValueError:
        return CANARY4 in target or CANARY6 in target
    return any(net.version == c.version and c.subnet_of(net) for c in CANARY_NETS)  # type: ignore[arg-type]


def check_event(event: object, canary_free: bool, line: str) -> None:
    for name in ("client", "orig_client", "relay_addr"):
        addr = getattr(event, name, None)
        if name != "relay_addr" and not _canonical(addr):  # a relay may be a socket: [private/dovecot-lmtp]
            raise Violation(f"{type(event).__name__}.{name} {addr!r} is not a canonical address")
        if canary_free and addr is not None and _is_canary(addr):
            raise Violation(f"{type(event).__name__}.{name} is the canary {addr}, which only the attacker wrote")


def check_decisions(decisions: Sequence, canary_free: bool) -> None:
    from relaywatch.postfix.mapkeys import InvalidBlock, render_key

    for d in decisions:
        # senders and destination domains are the attacker's own text by nature (alerts only);
        # a client or network is what gets blocked
        if canary_free and d.kind in ("client", "subnet") and _is_canary(d.target):
            raise Violation(f"a decision targets the canary: {d}")
        if d.action != "block":
            continue
        if d.kind in ("client", "subnet"):
            render_key(d.kind, d.target, "cidr")  # raises InvalidBlock: a violation
        elif d.kind == "sasl_user":
            try:
                key = render_key(d.kind, d.target, "hash")
            except InvalidBlock:
                continue  # refused before any map is written: safe
            if any(c.isspace() or not c.isprintable() for c in key):
                raise Violation(f"SASL key {key!r} would break the map")
        else:
            raise Violation(f"a block of kind {d.kind}")


def _pipeline():
    from relaywatch.config import Config
    from relaywatch.core.parse import LineParser, YearResolver
    from relaywatch.core.rules import DEFAULT_RULES
    from relaywatch.engine import Pipeline
    from relaywatch.reports.report import Tally
    from relaywatch.reports.timeline import Timeline
    from relaywatch.store.sqlite import Store

    rules = tuple(dataclasses.replace(r, threshold=1, min_clients=min(r.min_clients, 1)) for r in DEFAULT_RULES)
    config = dataclasses.replace(Config(), rules=rules, allow_networks=())
    tally, timeline = Tally(), Timeline(rules)
    pipeline = Pipeline(config, Store(None), persist_counts=False, sinks=(tally, timeline))
    return pipeline, tally, timeline, LineParser(YearResolver(2026))


def run_lines(lines: Sequence[str], canary_free: bool, reports: bool = True) -> list:
    """Parse, correlate and decide `lines` in a fresh pipeline with every threshold at 1; check everything."""
    from relaywatch.reports import report
    from relaywatch.reports.html import render_html
    from relaywatch.reports.report import ReplayResult

    pipeline, tally, timeline, parser = _pipeline()
    decisions = []
    for line in lines:
        start = time.perf_counter()
        event = parser.parse(line)
        elapsed = time.perf_counter() - start
        STATS.lines += 1
        if elapsed > STATS.slowest_s:
            STATS.slowest_s, STATS.slowest_line = elapsed, line
        if event is not None:
            check_event(event, canary_free, line)
        decisions += pipeline.feed(line, parser)
    check_decisions(decisions, canary_free)
    if reports:
        pipeline.flush()
        result = ReplayResult(pipeline.totals, pipeline.messages, decisions, tally, timeline)
        report.to_text(result)
        report.to_json(result)
        html = render_html(result, result.timeline)
        if "<script" in html.replace('<script type="application/json"', ""):
            raise Violation("attacker text reached the HTML report unescaped")
    return decisions


# --- atheris --------------------------------------------------------------------------------


def _hostile(fdp, max_len: int = 120) -> str:
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        if fdp.ConsumeBool():
            parts.append(FRAGMENTS[fdp.ConsumeIntInRange(0, len(FRAGMENTS) - 1)])
        else:
            parts.append(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12)))
    return "".join(parts)[:max_len]


def _printable(text: str) -> str:
    """What Postfix makes of a field: non-printable characters become '?'."""
    return "".join(c if c.isprintable() or c == " " else "?" for c in text)


def lines_from(fdp, corpus: Sequence[str]) -> tuple[list[str], bool]:
    """(lines, canary_free) from fuzzer bytes."""
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode <= 1:  # a hostile log from the templates
        lines = []
        for n in range(fdp.ConsumeIntInRange(1, 12)):
            template = TEMPLATES[fdp.ConsumeIntInRange(0, len(TEMPLATES) - 1)]
            fields = {"qid": QIDS[fdp.ConsumeIntInRange(0, len(QIDS) - 1)],
                      "name": NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)],
                      "ip": CLIENTS[fdp.ConsumeIntInRange(0, len(CLIENTS) - 1)],
                      "port": str(fdp.ConsumeIntInRange(1, 65535)), "rname": "mx.example",
                      "rip": RELAYS[fdp.ConsumeIntInRange(0, len(RELAYS) - 1)],
                      **{s: _printable(_hostile(fdp)) for s in SLOTS}}
            lines.append(fill(template, fields, n))
        return lines, True
    if mode == 2:  # a real line, mutated
        line = corpus[fdp.ConsumeIntInRange(0, len(corpus) - 1)]
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            i = fdp.ConsumeIntInRange(0, len(line))
            op = fdp.ConsumeIntInRange(0, 3)
            if op == 0:
                line = line[:i] + _hostile(fdp) + line[i:]
            elif op == 1:
                line = line[:i] + line[i + fdp.ConsumeIntInRange(0, 40):]
            elif op == 2:
                j = fdp.ConsumeIntInRange(i, len(line))
                line = line[:j] + line[i:j] + line[j:]
            else:
                line = line[:i] + chr(fdp.ConsumeIntInRange(0, 0x2FF)) + line[i + 1:]
        return [line], False
    raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 600))
    return raw.decode("utf-8", "replace").split("\n"), False


def _record(exc: BaseException, lines: Sequence[str]) -> None:
    STATS.violations += 1
    if len(STATS.findings) < 5:
        text = "".join(traceback.format_exception(exc)) + "\ninput:\n" + "\n".join(lines)
        STATS.findings.append(text)
        out = ROOT / "bench" / "fuzz-findings"
        out.mkdir(exist_ok=True)
        (out / (hashlib.sha256(text.encode()).hexdigest()[:12] + ".txt")).write_text(text)


def make_target(corpus: Sequence[str], runs: int, deadline: float) -> Callable[[bytes], None]:
    import atheris

    def test_one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        lines, canary_free = lines_from(fdp, corpus)
        try:
            run_lines(lines, canary_free, reports=STATS.inputs % 50 == 0)
        except Exception as exc:  # every exception is a violation; keep fuzzing, report at the end
            _record(exc, lines)
        STATS.inputs += 1
        if STATS.inputs >= runs or time.monotonic() > deadline:
            _finish()

    return test_one_input


def _finish() -> None:
    report()
    sys.stdout.flush()
    os._exit(1 if STATS.violations else 0)  # libFuzzer's exit skips Python's atexit


# --- hypothesis (fallback, and the tests) ------------------------------------------------------


def hypothesis_inputs():
    """A hypothesis strategy of (lines, canary_free), the same inputs as the atheris target's."""
    from hypothesis import strategies as st

    corpus = corpus_lines()
    alphabet = st.characters(blacklist_categories=("Cs",))
    hostile = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(alphabet, max_size=12)), max_size=6).map(
        lambda parts: _printable("".join(parts))[:120])
    fields = st.fixed_dictionaries({
        "qid": st.sampled_from(QIDS), "name": st.sampled_from(NAMES), "ip": st.sampled_from(CLIENTS),
        "port": st.integers(1, 65535).map(str), "rname": st.just("mx.example"), "rip": st.sampled_from(RELAYS),
        **{s: hostile for s in SLOTS}})
    templated = st.lists(st.tuples(st.sampled_from(TEMPLATES), fields), min_size=1, max_size=12).map(
        lambda items: ([fill(t, f, n) for n, (t, f) in enumerate(items)], True))

    @st.composite
    def mutated(draw):
        line = draw(st.sampled_from(corpus))
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(line)))
            op = draw(st.integers(0, 3))
            if op == 0:
                line = line[:i] + draw(hostile) + line[i:]
            elif op == 1:
                line = line[:i] + line[i + draw(st.integers(0, 40)):]
            elif op == 2:
                j = draw(st.integers(i, len(line)))
                line = line[:j] + line[i:j] + line[j:]
            else:
                line = line[:i] + draw(st.characters(max_codepoint=0x2FF)) + line[i + 1:]
        return [line], False

    raw = st.binary(max_size=600).map(lambda b: (b.decode("utf-8", "replace").split("\n"), False))
    return st.one_of(templated, templated, mutated(), raw)


def run_hypothesis(runs: int, deadline: float) -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=runs, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(hypothesis_inputs())
    def target(case):
        lines, canary_free = case
        if time.monotonic() > deadline:
            return
        try:
            run_lines(lines, canary_free, reports=STATS.inputs % 50 == 0)
        except Exception as exc:
            _record(exc, lines)
        STATS.inputs += 1

    target()


# --- report ----------------------------------------------------------------------------------


def worst_case_table() -> tuple[float, str]:
    from relaywatch.core.parse import LineParser, YearResolver

    parser = LineParser(YearResolver(2026))
    slowest, what = 0.0, ""
    count = 0
    for label, line in worst_cases():
        start = time.perf_counter()
        parser.parse(line)
        elapsed = time.perf_counter() - start
        count += 1
        if elapsed > slowest:
            slowest, what = elapsed, label
    print(f"worst cases: {count} crafted 8 KB lines, slowest parse {slowest * 1e3:.2f} ms ({what})")
    return slowest, what


def report() -> None:
    print(f"inputs fuzzed: {STATS.inputs:,}; lines fuzzed: {STATS.lines:,}; invariant violations (exceptions): "
          f"{STATS.violations}")
    print(f"slowest fuzzed line: {STATS.slowest_s * 1e3:.2f} ms to parse ({len(STATS.slowest_line)} chars: "
          f"{STATS.slowest_line[:100]!r})")
    worst_case_table()
    for text in STATS.findings:
        print("-" * 72)
        print(text[:3000])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=("atheris", "hypothesis"), help="default: atheris if it imports")
    ap.add_argument("--runs", type=int, default=200_000, help="inputs (logs of 1-12 lines) to try")
    ap.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    args, rest = ap.parse_known_args()
    engine = args.engine
    if engine is None:
        try:
            import atheris

            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    deadline = time.monotonic() + args.seconds
    print(f"engine: {engine}")
    if engine == "hypothesis":
        run_hypothesis(args.runs, deadline)
        report()
        return 1 if STATS.violations else 0
    import atheris

    with atheris.instrument_imports(include=["relaywatch"]):
        import relaywatch.htmlreport  # noqa: F401

        import relaywatch.engine  # noqa: F401 - imported to be instrumented
    atexit.register(report)
    atheris.Setup([sys.argv[0], *rest, "-rss_limit_mb=4096"], make_target(corpus_lines(), args.runs, deadline))
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
