"""The PostgreSQL store's contract, on a real private PostgreSQL 15 (tests/support/postgres.py):
what test_store.py asks of SQLite, per host; the blocks table Postfix reads; NOTIFY; the pull of
other hosts' counts; decisions unique across hosts under a race; passwords never in a message."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from relaywatch.build import block_keys
from relaywatch.model import ConfigError, Decision, RelaywatchError
from relaywatch.store.open import open_store
from relaywatch.store.postgres import Store
from relaywatch.store.records import BlockRow, DaemonStatus
from relaywatch.store.sqlite_file import StoreUnavailable
from support.postgres import PostgresServer


def decision(t: float = 1000.0, target: str = "218.144.0.0/16", kind: str = "subnet") -> Decision:
    return Decision(t, "block", kind, target, "wide_subnet", 60, 600, 40, ("line one", "line two"), ("8D076AE17",))


def store(pg: PostgresServer, host: str = "mx1", **kw: object) -> Store:
    return Store(pg.url(), host=host, block_keys=block_keys, **kw)  # type: ignore[arg-type]


def test_counts_add_up_per_host_and_come_back_oldest_first(postgres):
    mx1, mx2 = store(postgres), store(postgres, "mx2")
    mx1.commit_batch([("client", 101, "1.2.3.4", 2), ("client", 100, "1.2.3.4", 1)])
    mx1.commit_batch([("client", 101, "1.2.3.4", 3)])
    assert list(mx1.counts_since(100)) == [("client", 100, "1.2.3.4", 1), ("client", 101, "1.2.3.4", 5)]
    assert list(mx1.counts_since(101)) == [("client", 101, "1.2.3.4", 5)]
    assert postgres.psql("SELECT DISTINCT host FROM relaywatch_counts").split() == ["mx1"]
    assert list(mx2.counts_since(0)) == [("client", 100, "1.2.3.4", 1), ("client", 101, "1.2.3.4", 5)]


def test_decisions_and_positions_survive_a_reopen_and_positions_are_each_hosts_own(postgres):
    first = store(postgres)
    first.commit_batch([], [decision()], ("/var/log/mail.log", {"inode": 7, "offset": 1234}))
    first.close()
    again, other = store(postgres), store(postgres, "mx2")
    assert again.decisions() == [replace(decision(), hosts=("mx1",))] == other.decisions()  # the host that decided
    assert again.positions.get("/var/log/mail.log") == {"inode": 7, "offset": 1234}
    assert other.positions.get("/var/log/mail.log") is None
    # HostRow's shape, as SQLite's: `status` names the file each host reads (it said "no source recorded")
    assert [(h.host, h.position) for h in other.hosts()] == [
        ("mx1", {"source": "/var/log/mail.log", "inode": 7, "offset": 1234})]


def test_a_failed_batch_leaves_nothing_behind(postgres):
    s = store(postgres)
    s.commit_batch([("client", 100, "1.2.3.4", 1)], position=("src", {"offset": 10}))
    with pytest.raises(RelaywatchError):
        s.commit_batch([("client", 100, "1.2.3.4", 1), ("client", None, "x", 1)], [decision()],  # type: ignore[list-item]
                       position=("src", {"offset": 20}))
    assert list(s.counts_since(0)) == [("client", 100, "1.2.3.4", 1)]
    assert s.positions.get("src") == {"offset": 10} and s.decisions() == []
    s.commit_batch([], [decision()])  # its claim went with the failed transaction
    assert s.decisions() == [replace(decision(), hosts=("mx1",))]


def test_prune_forgets_old_buckets_of_every_host(postgres):
    mx1, mx2 = store(postgres), store(postgres, "mx2")
    mx1.commit_batch([("client", b, "1.2.3.4", 1) for b in range(100, 110)])
    mx2.commit_batch([("client", 100, "1.2.3.4", 1)])
    assert mx1.prune(105) == 6
    assert [row[1] for row in mx1.counts_since(0)] == list(range(105, 110))


def test_origins_and_open_messages_are_each_hosts_own(postgres):
    mx1, mx2 = store(postgres), store(postgres, "mx2")
    mx1.commit_batch([], origins=([("8D076AE17", "218.144.108.161", None, 100.0),
                                   ("8D076AE18", "218.144.9.9", None, 101.0),
                                   ("8D076AE19", "203.0.113.5", "alice", 102.0)], []),
                     messages=([("mx/8D076AE17", 100.0, 101.0, "218.144.108.161", None, "a@b", 2, ("x",))], []))
    mx1.commit_batch([], origins=([], ["8D076AE18"]))
    assert mx1.queue_ids(client="218.144.108.161") == ["8D076AE17"]
    assert mx1.queue_ids(network="218.144.0.0/16") == ["8D076AE17"]
    assert mx1.queue_ids(sasl_user="alice") == ["8D076AE19"]
    assert mx2.queue_ids(network="0.0.0.0/0") == [] and mx2.open_messages() == []
    assert [m.key for m in mx1.open_messages()] == ["mx/8D076AE17"]
    assert mx1.prune_origins(101.5) == 1
    assert mx1.queue_ids(network="0.0.0.0/0") == ["8D076AE19"]


def test_a_restore_reads_no_more_keys_per_dimension_than_a_window_holds(postgres):
    s = store(postgres)
    flood = [("client", 100 + i % 60, f"2a01:4f8:1:{i:x}::1", 1) for i in range(3000)]
    heavy = [("client", b, "198.51.100.7", 3) for b in range(100, 160)]
    s.commit_batch(flood + heavy + [("sender", 100, "flood@spam.example", 5000), ("client", 99, "old", 9)])
    every = list(s.counts_since(100))
    capped = list(s.counts_since(100, max_keys=1000))
    assert len({r[2] for r in capped if r[0] == "client"}) == 1000
    assert [r for r in capped if r[2] == "198.51.100.7"] == [r for r in every if r[2] == "198.51.100.7"]
    assert [r for r in capped if r[0] == "sender"] == [("sender", 100, "flood@spam.example", 5000)]


def test_blocks_are_what_postfix_asks_for_announced_and_expired_once(postgres):
    mx1, mx2 = store(postgres), store(postgres, "mx2")
    changes = mx2.block_changes()
    assert changes.wait(1.0)  # the LISTEN began: anything before it may have been missed
    assert not changes.wait(0.2)
    mx1.add_block(BlockRow("subnet", "218.144.0.0/16", "relay abuse", "wide_subnet", 100.0, 200.0))
    mx1.add_block(BlockRow("sasl_user", "bob@example.org", "stolen", "sasl_user", 100.0, None))
    assert changes.wait(5.0)
    query = ("SELECT action FROM relaywatch_blocks WHERE lookup_key = '{}' AND kind IN ('client','subnet')"
             " AND (until IS NULL OR until > {}) LIMIT 1")
    refusal = "REJECT blocked by relaywatch: wide_subnet: relay abuse"
    assert postgres.psql(query.format("218.144", 150)).strip() == refusal
    assert postgres.psql(query.format("218.144", 250)).strip() == ""
    assert postgres.psql("SELECT host, offences FROM relaywatch_blocks WHERE kind = 'sasl_user'").strip() == "mx1|1"
    assert [b.target for b in mx2.blocks(150.0)] == ["bob@example.org", "218.144.0.0/16"]  # by (since, kind)
    gone = [mx1.expire_blocks(250.0), mx2.expire_blocks(250.0)]
    assert [[b.target for b in g] for g in gone] == [["218.144.0.0/16"], []]
    assert changes.wait(5.0)
    mx2.add_block(BlockRow("subnet", "218.144.0.0/16", "again", "wide_subnet", 300.0, 400.0))
    assert mx1.offences("subnet", "218.144.0.0/16") == 2
    assert mx2.remove_block("subnet", "218.144.0.0/16") and not mx1.remove_block("subnet", "218.144.0.0/16")
    changes.close()


def test_the_other_hosts_counts_arrive_once_and_their_blocks_with_them(postgres):
    mx1, mx2 = store(postgres), store(postgres, "mx2")
    assert list(mx2.counts_since(0)) == []  # a restore: the pull starts from here
    mx1.commit_batch([("client", 100, "203.0.114.9", 3)])
    mx1.add_block(BlockRow("client", "203.0.114.9", "r", "client", 1000.0, 2000.0))
    mx1.commit_batch([("client", 101, "203.0.114.9", 2)], [decision(1000.0, "203.0.114.9", "client")])
    mx2.commit_batch([("client", 101, "203.0.114.9", 1)])
    news = mx2.fleet_news(0)
    assert news.counts == [("client", 100, "203.0.114.9", 3), ("client", 101, "203.0.114.9", 2)]
    assert [d.target for d in news.decisions] == ["203.0.114.9"] and [b.target for b in news.blocks] == ["203.0.114.9"]
    assert mx2.fleet_news(0) == ([], [], [])
    assert list(mx2.counts_since(0)) == [("client", 100, "203.0.114.9", 3), ("client", 101, "203.0.114.9", 3)]
    assert mx1.fleet_news(0).counts == [("client", 101, "203.0.114.9", 1)]


def test_a_decision_is_recorded_once_when_two_hosts_race_for_it(postgres):
    mx1, mx2 = store(postgres), store(postgres, "mx2")
    late = decision(1005.0)
    results: list[list[Decision]] = []
    with mx1.transaction():
        assert mx1.claim([decision()]) == [replace(decision(), hosts=("mx1",))]
        racer = threading.Thread(target=lambda: results.append(mx2.claim([late])))
        racer.start()
        time.sleep(0.5)
        assert racer.is_alive()  # it waits for mx1's transaction: the claim's row is taken
        mx1.commit_batch([], [decision()])
    racer.join(10)
    assert results == [[]]
    mx2.commit_batch([], [late])  # what lost is not recorded by a later batch either
    assert mx1.decisions() == [replace(decision(), hosts=("mx1",))]
    assert postgres.psql("SELECT host FROM relaywatch_decisions").split() == ["mx1"]
    after = decision(1000.0 + 600)  # the claim lasts the decision's window
    assert mx2.claim([after]) == [replace(after, hosts=("mx2",))]


def test_state_records_and_host_rows(postgres):
    mx1, mx2 = store(postgres), store(postgres, "mx2")
    mx1.status.put(DaemonStatus(pid=1, heartbeat=1000.0, caught_up=False, last_log_time=990.0))
    mx2.status.put(DaemonStatus(pid=2, heartbeat=1000.0, caught_up=True, last_log_time=10.0))
    mx1.days.put("2026-01-01", {"n": 1})
    assert mx1.status.get().pid == 1 and mx2.status.get().pid == 2
    assert mx1.days.days() == ["2026-01-01"] and mx2.days.days() == []
    assert mx1.days.prune("2026-01-02") == 1
    rows = {h.host: h for h in mx1.hosts()}
    assert (rows["mx1"].lag_s, rows["mx2"].lag_s) == (10.0, 0.0)
    assert rows["mx1"].last_contact is not None and abs(rows["mx1"].last_contact - time.time()) < 60


def test_the_schema_is_made_once_and_a_newer_one_refused(postgres):
    store(postgres).close()
    store(postgres, "mx2").close()
    assert postgres.psql("SELECT version FROM relaywatch_schema").split() == ["2"]
    first = store(postgres)
    first.commit_batch([], [decision()])
    first.close()
    postgres.psql("ALTER TABLE relaywatch_decisions DROP COLUMN hosts; UPDATE relaywatch_schema SET version = 1")
    upgraded = store(postgres, "mx2")  # version 1 had no hosts: added, older decisions name none
    assert postgres.psql("SELECT version FROM relaywatch_schema").split() == ["2"]
    assert upgraded.decisions() == [decision()]
    upgraded.commit_batch([], [decision(1000.0 + 600)])
    assert [d.hosts for d in upgraded.decisions()] == [(), ("mx2",)]
    postgres.psql("UPDATE relaywatch_schema SET version = 99")
    with pytest.raises(RelaywatchError, match="schema version 99 was made by a newer relaywatch"):
        store(postgres)


def test_passwords_never_reach_a_message(postgres, tmp_path: Path):
    closed = f"postgresql://relaywatch:S3CRET@127.0.0.1:{postgres.port + 1}/x"
    with pytest.raises(RelaywatchError) as err:
        Store(closed, host="mx1")
    assert "S3CRET" not in str(err.value) and "relaywatch:***@127.0.0.1" in str(err.value)
    # a command (`status` during an outage, its daemon running on) does not say the daemon will not start
    assert "pg_hba.conf" in str(err.value) and "does not start" not in str(err.value)
    with pytest.raises(StoreUnavailable, match="relaywatch does not start without its state"):
        Store(closed, host="mx1", degrade=True)  # the daemon, starting
    secret = tmp_path / "pw"
    secret.write_text("FILESECRET\n")
    secret.chmod(0o644)  # README: 0600; libpq ignores a ~/.pgpass others can read, relaywatch refuses it
    with pytest.raises(ConfigError, match=r"\[state\] password_file: .* readable by every user \(mode 0644\)"):
        open_store(postgres.url(), host="mx1", password_file=str(secret))
    secret.chmod(0o600)
    with pytest.raises(StoreUnavailable) as err2:
        open_store(closed.replace("S3CRET", "x"), host="mx1", password_file=str(secret))
    assert "FILESECRET" not in str(err2.value)
    with pytest.raises(ConfigError, match=r"\[state\] password_file: cannot read"):
        open_store(postgres.url(), host="mx1", password_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"\[state\] database: .*invalid URI query parameter"):
        open_store(postgres.url() + "?bogus=1", host="mx1")
    assert isinstance(open_store(postgres.url(), host="mx1", password_file=str(secret)), Store)  # trust: unused


def test_reads_answer_from_memory_and_writes_wait_while_the_database_is_away(postgres_private, monkeypatch):
    pg = postgres_private
    s = Store(pg.url(), host="mx1", block_keys=block_keys, degrade=True)
    s.add_block(BlockRow("client", "203.0.114.9", "r", "client", 100.0, None))
    s.status.put(DaemonStatus(pid=1, heartbeat=1.0))
    pg.stop(remove=False)
    with pytest.raises(StoreUnavailable):
        s.commit_batch([("client", 1, "k", 1)])
    s.add_block(BlockRow("client", "203.0.114.10", "r", "client", 101.0, None))
    s.status.put(DaemonStatus(pid=1, heartbeat=2.0))
    assert [b.target for b in s.blocks(150.0)] == ["203.0.114.9", "203.0.114.10"]
    assert s.status.get().heartbeat == 2.0 and s.backlog == 2
    assert s.decisions() == [] and s.fleet_news(0) == ([], [], [])
    pg.pid = PostgresServer._boot(pg.root, pg.port).pid
    monkeypatch.setattr(s, "_retry_at", 0.0)
    s.commit_batch([("client", 1, "k", 1)])
    assert s.backlog == 0 and s.unavailable is None
    assert pg.psql("SELECT target FROM relaywatch_blocks ORDER BY since").split() == ["203.0.114.9", "203.0.114.10"]
    assert list(s.counts_since(0)) == [("client", 1, "k", 1)]


def test_the_commands_use_the_shared_database_and_a_broken_url_exits_78(postgres, tmp_path: Path):
    from click.testing import CliRunner

    from relaywatch.cli import main
    from support.configs import daemon_sections, write_config

    cfg = write_config(tmp_path / "rw.toml", daemon_sections(tmp_path, database=postgres.url()),
                       {"fleet": {"host": "mx9"}}, mode=0o600)
    out = CliRunner().invoke(main, ["block", "203.0.114.7", "-c", str(cfg)])
    assert postgres.psql("SELECT host || ' ' || lookup_key FROM relaywatch_blocks").strip() == "mx9 203.0.114.7", \
        out.output
    listed = CliRunner().invoke(main, ["blocks", "--json", "-c", str(cfg)])
    assert "203.0.114.7" in listed.output
    for url, key in (("postgresql://u:S3CRET@127.0.0.1:port/x", "[state] database"),
                     ("mysql://u@h/x", "[state] database")):
        bad = write_config(tmp_path / "bad.toml", {"state": {"database": url}}, mode=0o600)
        checked = CliRunner().invoke(main, ["config", "--check", "-c", str(bad)])
        assert checked.exit_code == 78 and key in checked.output and "S3CRET" not in checked.output
    shown = CliRunner().invoke(main, ["config", "-c", str(write_config(
        tmp_path / "pw.toml", {"state": {"database": "postgresql://u:S3CRET@db/x"}}, mode=0o600))])
    assert shown.exit_code == 0 and "S3CRET" not in shown.output and "u:***@db" in shown.output


@pytest.mark.parametrize("landed", [True, False])
def test_a_commit_whose_answer_was_lost_is_written_once(postgres, monkeypatch, landed):
    """The connection dies at COMMIT: the batch may or may not have landed. The pipeline sends it again
    with what it read since; the host's row tells the store which, so the counts land exactly once."""
    import psycopg

    s = store(postgres)
    s.commit_batch([("client", 100, "1.2.3.4", 1)])
    real_exit = psycopg.Transaction.__exit__
    cut: list[bool] = []

    def commit_then_lose_the_answer(tx: psycopg.Transaction, *exc: object) -> bool | None:
        if cut or exc[0] is not None:
            return real_exit(tx, *exc)  # type: ignore[arg-type]
        cut.append(True)
        if landed:
            real_exit(tx, None, None, None)  # the server committed ...
        tx.connection.close()  # ... (or not) and the answer is lost with the connection
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(psycopg.Transaction, "__exit__", commit_then_lose_the_answer)
    heard: list[bool] = []
    with pytest.raises(StoreUnavailable), s.transaction():
        s.commit_batch([("client", 100, "1.2.3.4", 2)], position=("src", {"offset": 20}))
        s.on_commit(lambda: heard.append(True))
    assert not heard and cut
    total = postgres.psql("SELECT sum(n) FROM relaywatch_counts").strip()
    assert total == ("3" if landed else "1")
    s.commit_batch([("client", 100, "1.2.3.4", 2 + 4)], position=("src", {"offset": 40}))  # again, with what came since
    assert postgres.psql("SELECT sum(n) FROM relaywatch_counts").strip() == "7"
    s.commit_batch([("client", 100, "1.2.3.4", 1)])  # and nothing is left out of the batches after it
    assert list(s.counts_since(0)) == [("client", 100, "1.2.3.4", 8)]


def test_run_refuses_a_pgsql_map_without_postgres_and_says_what_to_check_when_postgres_is_down(postgres, tmp_path,
                                                                                               caplog):
    """A pgsql: access map with a SQLite state: Postfix would read a table nobody writes (78, the key named).
    PostgreSQL down at start: no guessing where to read from; refused (1, systemd retries) with the
    database's URL without its password and what to check."""
    from click.testing import CliRunner

    from relaywatch.cli import main
    from support.configs import daemon_sections, write_config

    pgsql_map = {"postfix": {"client_access_map": f"pgsql:{tmp_path}/relaywatch-clients.cf"}}
    cfg = write_config(tmp_path / "sqlite.toml", daemon_sections(tmp_path), pgsql_map, mode=0o600)
    out = CliRunner().invoke(main, ["run", "-c", str(cfg)])
    assert out.exit_code == 78, caplog.text
    assert "[postfix] client_access_map: pgsql:" in caplog.text and "[state] database is a SQLite file" in caplog.text
    caplog.clear()

    down = f"postgresql://relaywatch:S3CRET@127.0.0.1:{postgres.port + 1}/relaywatch"
    cfg = write_config(tmp_path / "down.toml", daemon_sections(tmp_path, database=down), mode=0o600)
    out = CliRunner().invoke(main, ["run", "-c", str(cfg)])
    assert out.exit_code == 1, caplog.text
    assert "S3CRET" not in caplog.text and "relaywatch:***@127.0.0.1" in caplog.text
    assert "check that it runs" in caplog.text and "pg_hba.conf" in caplog.text
