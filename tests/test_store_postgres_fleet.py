"""Daemons as fleet hosts on one real PostgreSQL: an abuser spread over two hosts, below each host's
threshold, decided once on the fleet's sum; the host that loses a race adopts the block without a
notice; a host killed at any moment counts each line once; PostgreSQL stopped mid-flood and back:
the host went on detecting and blocking, then handed over everything, nothing lost or doubled."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import time
from pathlib import Path

from relaywatch.config import load
from relaywatch.daemon import Daemon
from relaywatch.store import postgres as pg_store
from relaywatch.store.records import FleetNews
from support.configs import daemon_sections, write_config
from support.postgres import PostgresServer
from support.waiting import wait_for
from test_daemon import start
from test_daemon_faults import messages

ABUSER = "203.0.114.50"


def host(tmp_path: Path, pg: PostgresServer, name: str, threshold: int = 5) -> tuple[Path, Path]:
    """(config, mail log) of the fleet member `name`: its own log and map, the shared database."""
    home = tmp_path / name
    home.mkdir()
    cfg = write_config(home / "rw.toml", daemon_sections(home, database=pg.url()),
                       {"fleet": {"host": name}, "postfix": {"local_domains": ["woodelf.org"]},
                        "allow": {"networks": []}, "rules.client": {"threshold": threshold}}, mode=0o600)
    return cfg, home / "mail.log"


def daemon(cfg: Path) -> Daemon:
    d = Daemon(str(cfg), load(cfg))
    d.step()  # the first position: the log is read from here on
    return d


def read(d: Daemon) -> None:
    """One batch of the log, then a read that finds none: the coalesced lines commit (a quiet log)."""
    d.step()
    d.step()


def append(log: Path, text: str) -> None:
    with open(log, "a") as f:
        f.write(text)


def sql(pg: PostgresServer, query: str) -> list[str]:
    return pg.psql(query).split()


def offset(pg: PostgresServer) -> str:
    """The stored read position's offset ("" before the daemon made its tables or stored one)."""
    try:
        return pg.psql("SELECT value::json->>'offset' FROM relaywatch_positions").strip()
    except subprocess.CalledProcessError:
        return ""


def test_an_abuser_spread_over_two_hosts_is_blocked_once_on_the_fleet_sum(postgres, tmp_path):
    (cfg1, log1), (cfg2, log2) = host(tmp_path, postgres, "mx1"), host(tmp_path, postgres, "mx2")
    mx1, mx2 = daemon(cfg1), daemon(cfg2)
    append(log1, messages(3, ABUSER))
    append(log2, messages(3, ABUSER, first=100))
    read(mx1)
    assert sql(postgres, "SELECT count(*) FROM relaywatch_decisions") == ["0"]  # 3 < 5: alone, never
    mx2.step()
    assert sql(postgres, "SELECT host || ':' || target FROM relaywatch_decisions") == [f"mx2:{ABUSER}"]
    assert sql(postgres, "SELECT host || ':' || target FROM relaywatch_blocks") == [f"mx2:{ABUSER}"]
    assert [d.hosts for d in mx1.store.decisions()] == [("mx1", "mx2")]  # both hosts' counts made it
    append(log1, messages(2, ABUSER, first=10))
    read(mx1)  # mx1 now sees mx2's block: no second decision
    assert sql(postgres, "SELECT count(*) FROM relaywatch_decisions") == ["1"]
    assert sql(postgres, "SELECT host || ':' || sum(n) FROM relaywatch_counts WHERE dim = 'client'"
                         " GROUP BY host ORDER BY host") == ["mx1:5", "mx2:3"]
    assert ABUSER in [b.target for b in mx1.store.blocks(time.time())]
    for d in (mx1, mx2):
        d.close()


def test_the_host_that_loses_the_race_adopts_the_block_without_a_notice(postgres, tmp_path, caplog, monkeypatch):
    (cfg1, log1), (cfg2, log2) = host(tmp_path, postgres, "mx1"), host(tmp_path, postgres, "mx2")
    mx1, mx2 = daemon(cfg1), daemon(cfg2)
    append(log1, messages(5, ABUSER))
    append(log2, messages(5, ABUSER, first=100))
    # mx2 read before mx1's commit: the race (the store's news, as a compiled Pipeline's absorb cannot be replaced)
    monkeypatch.setattr(mx2.store, "fleet_news", lambda since: FleetNews([], [], []))
    mx1.step()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        mx2.step()
    said = [r.getMessage() for r in caplog.records]
    assert f"BLOCK client {ABUSER}: already decided by another host of the fleet; its block is adopted" in said
    assert not any(m.startswith(f"BLOCK client {ABUSER}:") and "adopted" not in m for m in said), said
    assert sql(postgres, "SELECT host FROM relaywatch_decisions") == ["mx1"]
    assert sql(postgres, "SELECT host || ':' || offences FROM relaywatch_blocks") == ["mx1:1"]
    assert mx2.blocker.pending  # its own map takes the winner's block at the next sync
    for d in (mx1, mx2):
        d.close()


def test_postgres_stopped_mid_flood_nothing_lost_nothing_doubled(postgres_private, tmp_path, caplog, monkeypatch):
    pg = postgres_private
    monkeypatch.setattr(pg_store, "OUTAGE_RETRY_S", 0.2)
    cfg, log = host(tmp_path, pg, "mx1")
    mx1 = daemon(cfg)
    append(log, messages(2, ABUSER))
    mx1.step()
    pg.stop(remove=False)
    with caplog.at_level(logging.INFO):
        for i in range(3):  # the flood goes on while the database is away; the block is made from memory
            append(log, messages(4, ABUSER, first=10 + 4 * i))
            mx1.step()
        assert ABUSER in [b.target for b in mx1.store.blocks(time.time())]
        assert mx1.store.unavailable is not None and mx1.store.backlog >= 1
        pg.pid = PostgresServer._boot(pg.root, pg.port).pid
        time.sleep(0.3)
        append(log, messages(1, ABUSER, first=50))
        mx1.step()
        mx1.step()
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "PostgreSQL cannot be reached or is restarting" in said and "can be written again" in said
    assert sql(pg, "SELECT sum(n) FROM relaywatch_counts WHERE dim = 'client'") == ["15"]
    assert sql(pg, "SELECT host || ':' || target FROM relaywatch_decisions") == [f"mx1:{ABUSER}"]
    assert sql(pg, "SELECT target FROM relaywatch_blocks") == [ABUSER]
    assert offset(pg) == str(log.stat().st_size)
    mx1.close()


def test_a_host_killed_at_any_moment_counts_each_line_once(postgres, tmp_path):
    cfg, log = host(tmp_path, postgres, "mx1", threshold=100_000)
    log.write_text("")
    data = "".join(messages(1, f"203.0.114.{i % 200 + 1}", first=i) for i in range(400))
    rng = random.Random(18)
    proc = start(cfg, tmp_path / "daemon.err")
    cut = kills = 0
    try:
        wait_for(lambda: offset(postgres) != "", what="the first position")
        while cut < len(data):
            step = rng.randrange(1, 8000)
            append(log, data[cut:cut + step])
            cut += step
            time.sleep(rng.random() * 0.3)
            if rng.random() < 0.5:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                proc = start(cfg, tmp_path / "daemon.err")
        size = str(log.stat().st_size)
        wait_for(lambda: offset(postgres) == size, 60, "the end of the log")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert kills >= 3
    assert sql(postgres, "SELECT sum(n) FROM relaywatch_counts WHERE dim = 'client'") == ["400"]
    assert sql(postgres, "SELECT count(DISTINCT key) FROM relaywatch_counts WHERE dim = 'client'") == ["200"]


def test_a_leak_alarm_both_hosts_see_is_recorded_and_told_by_one(postgres, tmp_path, sink):
    """Both hosts' logs show the blocked client's mail still queued: the alarm is claimed when stored,
    and only the host that won it sends the notice (before: one notice per host)."""
    from relaywatch.build import responder_for
    from relaywatch.notify.notifier import Notifier
    from support.facts import relayed

    told = []
    for name in ("mx1", "mx2"):
        cfg, _ = host(tmp_path, postgres, name)
        store = pg_store.Store(postgres.url(), host=name)
        notifier = Notifier((sink.url("json", f"/{name}"),), coalesce_s=0)
        responder = responder_for(load(cfg), store, None, notifier)
        responder.leaks.watch({("client", ABUSER): 1000.0})
        for i in range(5):
            responder.leaks.observe(relayed(1010.0 + i, ABUSER, qid=f"Q{i}", queued=1010.0 + i))
        told += [(name, alarm.notified) for alarm in responder.check_leaks()]
        notifier.close(timeout=10)
        store.close()
    assert told == [("mx1", True), ("mx2", False)]
    assert sql(postgres, "SELECT host || ':' || rule FROM relaywatch_decisions") == ["mx1:block_not_enforced"]
    assert [path for path, _ in sink.requests] == ["/mx1"]
