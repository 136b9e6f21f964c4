"""The fleet end to end (issue 18): three private Postfix instances whose client lookups are `pgsql:`
tables on one private PostgreSQL 15, three real `relaywatch run` daemons (one per instance, each
following its instance's log, [fleet] host mx1|mx2|mx3, one shared [state] database), notifications
to a real HTTP sink. Real SMTP sessions (XCLIENT supplies the client address Postfix judges).

- The flood: one abuser spread round-robin over the three instances, no host's own count reaching
  the client rule, the fleet's sum does: the abuser is refused at RCPT (5xx) by all three, the
  decision is recorded once (one row, one notification), the other clients are never refused.
- The fault: PostgreSQL stopped in the middle of such a flood and started again: Postfix defers (4xx)
  through its pgsql: table meanwhile, the daemons keep counting and deciding (each says so once),
  and hand over exactly what they counted once the database is back; the abuser ends refused by all.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relaywatch.postfix.pgsql_maps import role_sql
from support.configs import write_config
from support.http_sink import Sink
from support.pgsql_blocks import cfs, need_parts, target
from support.postfix_rig import REMOTE_RCPT, PostfixRig
from support.postgres import PostgresServer
from support.waiting import wait_for
from test_daemon import start

pytestmark = pytest.mark.postfix

ABUSER = "61.177.3.50"  # a global address: Python's ipaddress would call 192.0.2/24 and friends not global
INNOCENTS = ("81.2.69.142", "91.198.174.192", "151.101.1.69")
OWNER, OWNER_PASSWORD = "relaywatch", "Fl33t-0wner-pw"  # the daemons' role, from [state] password_file
CLIENTS = (ABUSER, *INNOCENTS)
HOSTS = ("mx1", "mx2", "mx3")
BLOCKED = "blocked by relaywatch: client: "


@dataclass
class Member:
    name: str
    rig: PostfixRig
    cfg: Path
    err: Path
    proc: subprocess.Popen[bytes] | None = None

    def said(self) -> str:
        return self.err.read_text() if self.err.exists() else ""


@dataclass
class Fleet:
    pg: PostgresServer
    sink: Sink
    members: list[Member] = field(default_factory=list)
    rigs: list[PostfixRig] = field(default_factory=list)

    def sql(self, query: str) -> list[str]:
        return self.pg.psql(query).split()

    def abuser_counts(self) -> dict[str, int]:
        rows = self.sql(f"SELECT host || '=' || sum(n) FROM relaywatch_counts WHERE dim = 'client'"
                        f" AND key = '{ABUSER}' GROUP BY host")
        return {h: int(n) for h, n in (r.split("=") for r in rows)}

    def stored_total(self) -> int:
        return int(self.sql("SELECT coalesce(sum(n), 0) FROM relaywatch_counts WHERE dim = 'client'")[0])

    def sent_total(self) -> int:
        """Relayed recipients, as the three Postfix logs say (one recipient per message here)."""
        return sum(m.rig.maillog.read_text().count("status=sent") for m in self.members)

    def notices(self, about: str) -> list[tuple[str, str]]:
        """(host, title) of every notification (a push, perhaps of several merged notices) that mentions `about`."""
        return [(m.name, p.get("title", "")) for m in self.members for p in self.sink.to(f"/{m.name}")
                if about in p.get("title", "") + "\n" + p.get("message", "")]


def send(rig: PostfixRig, client: str, n: int) -> tuple[int, str]:
    return rig.send("127.0.0.9", recipients=(f"victim{n}@hanmail.example",), xclient_addr=client)


def rcpt(rig: PostfixRig, client: str) -> tuple[int, str]:
    """A new session judged as `client` up to RCPT, then RSET: the answer relays nothing."""
    with smtplib.SMTP("127.0.0.1", rig.port, source_address=("127.0.0.9", 0), timeout=30) as smtp:
        smtp.ehlo("client.relaywatch.test")
        smtp.docmd("XCLIENT", f"ADDR={client} NAME=[UNAVAILABLE]")
        smtp.ehlo("client.relaywatch.test")
        code, msg = smtp.mail("journeypark@hananet.example")
        if code == 250:
            code, msg = smtp.rcpt(REMOTE_RCPT)
        smtp.rset()
        return code, msg.decode()


def refused(reply: tuple[int, str]) -> bool:
    return reply[0] == 554 and BLOCKED in reply[1]


def postfix(rig: PostfixRig, *args: str) -> None:
    subprocess.run(list(args[:1]) + ["-c", rig.config_directory, *args[1:]], check=True, capture_output=True,
                   timeout=60)


def reload(rig: PostfixRig) -> None:
    """New smtpd processes: one that saw its pgsql: database fail skips it for 60 s (Postfix's dict_pgsql)."""
    pids = rig.smtpd_pids()
    rig.reload()
    rig.wait_for_exit(pids)


def postconf(rig: PostfixRig, setting: str) -> None:
    postfix(rig, "/usr/sbin/postconf", "-e", setting)
    past = time.time() - 60  # Postfix commands wait ~2 s for a main.cf changed just now
    os.utime(Path(rig.config_directory) / "main.cf", (past, past))
    reload(rig)


def hold_new_mail(rig: PostfixRig, on: bool) -> None:
    """Mail accepted from now on waits in the hold queue (released by `postsuper -H ALL`): mail accepted
    before an outage and delivered during it, as a busy queue would."""
    postconf(rig, f"smtpd_end_of_data_restrictions = {'check_client_access static:HOLD' if on else ''}")


def status(member: Member) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relaywatch", "status", "--json", "-c", str(member.cfg)],
                          capture_output=True, text=True, timeout=60)


@contextmanager
def fleet_of_three(pg: PostgresServer, sink: Sink, tmp_path: Path, threshold: int) -> Iterator[Fleet]:
    """Set up as README's "Several mail hosts" says: the daemons' role logs in with a password file, the
    first daemon makes the tables, then the read-only role's SQL (install-maps prints it) lets Postfix in."""
    need_parts()
    pg.dbname = "relaywatch"
    hba = pg.root / "data" / "pg_hba.conf"
    hba.write_text(f"host all {OWNER} 127.0.0.1/32 scram-sha-256\nhost all relaywatch_postfix 127.0.0.1/32"
                   f" scram-sha-256\n" + hba.read_text())
    pg.psql(f"CREATE ROLE {OWNER} LOGIN PASSWORD '{OWNER_PASSWORD}'; ALTER DATABASE relaywatch OWNER TO {OWNER};"
            " SELECT pg_reload_conf()")
    secret = tmp_path / "db-password"
    secret.write_text(OWNER_PASSWORD + "\n")
    secret.chmod(0o600)
    fleet = Fleet(pg, sink)
    try:
        for name in HOSTS:
            rig = PostfixRig.start("pgsql", cfs(pg))
            fleet.rigs.append(rig)
            assert rig.sasl_list is not None
            # the 2003 hole: a /8 where a /32 was meant lets the clients relay (XCLIENT names them)
            postconf(rig, f"mynetworks = 127.0.0.0/8 {' '.join(a.split('.')[0] + '.0.0.0/8' for a in CLIENTS)}")
            cfg = write_config(tmp_path / f"{name}.toml", {
                "source": {"path": rig.maillog},
                "state": {"database": pg.url(user=OWNER), "password_file": secret},
                "fleet": {"host": name},
                "postfix": {"config_directory": rig.config_directory, "client_access_map": str(rig.reject_list),
                            "sasl_access_map": str(rig.sasl_list), "local_domains": ["relaywatch.test"]},
                "allow": {"networks": []},
                "rules.client": {"threshold": threshold},
                "notify": {"urls": [sink.url("json", f"/{name}")], "coalesce": "1s", "cooldown": "1s"},
            }, mode=0o600)
            fleet.members.append(Member(name, rig, cfg, tmp_path / f"{name}.err"))
        for i, m in enumerate(fleet.members):
            m.proc = start(m.cfg, m.err)
            wait_for(lambda m=m: "following file:" in m.said() or m.proc.poll() is not None, 60, f"{m.name} to start")
            assert m.proc.poll() is None, m.said()
            if i == 0:  # the tables exist: the database's owner runs what install-maps printed
                pg.psql(" ".join(line for line in role_sql(target(pg)) if not line.startswith("--")))
        yield fleet
    finally:
        for m in fleet.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.send_signal(signal.SIGTERM)
                try:
                    m.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()
        for rig in fleet.rigs:
            rig.stop()


def stop_daemons(fleet: Fleet) -> None:
    """SIGTERM: each daemon commits and sends what it still holds (notifications included), exit 0."""
    for m in fleet.members:
        assert m.proc is not None
        m.proc.send_signal(signal.SIGTERM)
    for m in fleet.members:
        assert m.proc is not None and m.proc.wait(timeout=30) == 0, m.said()


def test_an_abuser_rotating_over_three_hosts_is_refused_by_all_on_the_fleet_sum(postgres_private, sink, tmp_path):
    threshold = 12
    with fleet_of_three(postgres_private, sink, tmp_path, threshold) as fleet:
        rigs = [m.rig for m in fleet.members]
        accepted = n = 0
        crossed_at = 0.0
        innocent_replies: list[tuple[int, str]] = []
        while accepted < threshold:  # round-robin: the threshold-th relayed message crosses the fleet's sum
            rig = rigs[n % 3]
            if accepted == threshold - 1:  # so that the crossing is this message (measured): all before it stored
                wait_for(lambda: sum(fleet.abuser_counts().values()) == threshold - 1, 30, "the flood stored")
            code, text = send(rig, ABUSER, n)
            assert code == 250, text  # no host refuses before the fleet's sum reaches the rule
            accepted, crossed_at = accepted + 1, time.monotonic()
            if n < 6:
                innocent_replies += [send(rig, INNOCENTS[(n + k) % 3], 1000 + 3 * n + k) for k in range(3)]
            n += 1
            time.sleep(0.15)  # a flood of about 5 messages a second: each host's commit lands in between
        refused_after: dict[str, float] = {}
        deadline = time.monotonic() + 30
        while len(refused_after) < 3 and time.monotonic() < deadline:
            for m in fleet.members:
                if m.name not in refused_after and refused(rcpt(m.rig, ABUSER)):
                    refused_after[m.name] = time.monotonic() - crossed_at
            time.sleep(0.02)
        assert sorted(refused_after) == list(HOSTS), [m.said() for m in fleet.members]
        print("\ncrossing message -> RCPT refused: " + ", ".join(f"{h} {refused_after[h] * 1000:.0f} ms"
                                                                   for h in HOSTS))
        replies = [rcpt(m.rig, ABUSER) for m in fleet.members]
        assert all(refused(r) for r in replies) and all(r[1].startswith("5.7.1 ") for r in replies), replies
        assert all(r[0] == 250 for r in innocent_replies), innocent_replies
        assert [rcpt(m.rig, c)[0] for m in fleet.members for c in INNOCENTS] == [250] * 9

        wait_for(lambda: fleet.stored_total() == fleet.sent_total() == accepted + len(innocent_replies), 30,
                 "every relayed recipient stored")
        per_host = fleet.abuser_counts()
        assert sorted(per_host) == list(HOSTS) and all(c < threshold for c in per_host.values()), per_host
        assert sum(per_host.values()) == threshold  # the fleet's sum crossed: no host's own count did
        decided = fleet.sql(f"SELECT host || ':' || rule FROM relaywatch_decisions WHERE target = '{ABUSER}'")
        assert len(decided) == 1 and decided[0].endswith(":client")
        assert fleet.sql("SELECT target FROM relaywatch_blocks") == [ABUSER]
        assert fleet.sql("SELECT count(*) FROM relaywatch_decisions") == ["1"]  # no innocent, no second row
        listing = json.loads(status(fleet.members[0]).stdout)
        assert [h["host"] for h in listing["hosts"]] == list(HOSTS)
        stop_daemons(fleet)
    told = fleet.notices(f"blocked {ABUSER}")
    assert [h for h, _ in told] == [decided[0].split(":")[0]], told  # one notification, from the decider


def test_postgres_stopped_mid_flood_defers_mail_and_the_fleet_hands_over_once(postgres_private, sink, tmp_path):
    threshold = 10
    pg = postgres_private
    with fleet_of_three(pg, sink, tmp_path, threshold) as fleet:
        rigs = [m.rig for m in fleet.members]
        for n in range(6):  # 2 per host, stored; then every host pulls the others' counts with a line of its own
            assert send(rigs[n % 3], ABUSER, n)[0] == 250
            time.sleep(0.15)
        wait_for(lambda: sum(fleet.abuser_counts().values()) == 6, 30, "the first six stored")
        for k, rig in enumerate(rigs):
            assert send(rig, INNOCENTS[k], 100 + k)[0] == 250
        wait_for(lambda: fleet.stored_total() == 9, 30, "the innocents stored")

        for rig in rigs:
            hold_new_mail(rig, True)
        held = [0, 1, 2, 0, 1, 2, 0, 0]  # mx1 4, mx2 2, mx3 2: mx1's view (6 + 4) reaches 10 during the outage
        for i, h in enumerate(held):
            assert send(rigs[h], ABUSER, 10 + i)[0] == 250
        pg.stop(remove=False)
        for rig in rigs:  # Postfix cannot ask its pgsql: table: it defers, it does not accept
            for client in (ABUSER, INNOCENTS[0]):
                code, text = send(rig, client, 99)
                assert code == 451 and text.startswith("4.3.5 "), (code, text)
        for rig in rigs:
            hold_new_mail(rig, False)
            postfix(rig, "/usr/sbin/postsuper", "-H", "ALL")  # the held mail is delivered while the database is down
            postfix(rig, "/usr/sbin/postqueue", "-f")  # a qmgr just restarted by the reload may miss postsuper's wakeup
        wait_for(lambda: fleet.sent_total() == 17, 30, "the held mail delivered")
        for m in fleet.members:  # the daemons count on; each says once that the database is away
            wait_for(lambda m=m: "PostgreSQL cannot be reached or is restarting" in m.said(), 30, f"{m.name}'s log")
        wait_for(lambda: f"BLOCK client {ABUSER}" in fleet.members[0].said(), 30, "mx1 to decide from memory")
        down = status(fleet.members[1])
        assert down.returncode != 0 and "PostgreSQL cannot be reached" in down.stderr, down

        pg.restart()  # the same data and port
        wait_for(lambda: all("can be written again" in m.said() for m in fleet.members), 60, "the handover")
        wait_for(lambda: fleet.stored_total() == fleet.sent_total(), 30, "every relayed recipient stored")
        assert fleet.abuser_counts() == {"mx1": 6, "mx2": 4, "mx3": 4}  # each host's own, once: no doubles
        assert fleet.sql("SELECT host || ':' || target FROM relaywatch_decisions") == [f"mx1:{ABUSER}"]
        assert fleet.sql("SELECT host || ':' || target FROM relaywatch_blocks") == [f"mx1:{ABUSER}"]
        for rig in rigs:
            reload(rig)
        assert all(refused(rcpt(rig, ABUSER)) for rig in rigs)
        assert [rcpt(rig, c)[0] for rig in rigs for c in INNOCENTS] == [250] * 9
        for m in fleet.members:
            assert m.said().count("relaywatch keeps following the log, detecting and blocking") == 1, m.said()
        stop_daemons(fleet)
    for name in HOSTS:
        down_told = [t for h, t in fleet.notices("cannot write its state database") if h == name]
        assert len(down_told) == 1, fleet.sink.requests
        assert len([t for h, t in fleet.notices("state database writable again") if h == name]) == 1
    assert {h for h, _ in fleet.notices(f"blocked {ABUSER}")} == {"mx1"}
    assert not re.search(OWNER_PASSWORD, "".join(m.said() for m in fleet.members))  # never logged

