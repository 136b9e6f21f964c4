"""Issue 18, central logs and the fleet view: several hosts' logs (or a central syslog file) replayed as
one fleet, decisions that name their hosts, `status` and `check` for the fleet.

The logs are tests/data/fleet (make_fleet.py says the story): an abuser rotating over mx1, mx2 and mx3
stays under the client rule on every host and crosses it for the fleet; queue ids collide across
hosts; mx3's clock is 40 s behind; mx1's log is rotated twice."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.config import Config
from relaywatch.replay import replay
from relaywatch.reports import status as status_mod
from relaywatch.reports.check import recent
from relaywatch.reports.report import to_json, to_text
from relaywatch.sources import fleet
from relaywatch.store.records import DaemonStatus, HostRow
from relaywatch.store.sqlite import Store
from support.configs import sections, write_config


def config_file(tmp_path: Path) -> Path:
    """A configuration with its state in tmp_path and no Postfix (config_directory names a missing directory)."""
    return write_config(tmp_path / "rw.toml", sections(database=tmp_path / "state.db",
                                                       config_directory=tmp_path / "no-postfix",
                                                       client_access_map=f"hash:{tmp_path}/clients"),
                        {"postfix": {"local_domains": ["mx1.example", "mx2.example", "mx3.example"]}})

DATA = Path(__file__).parent / "data" / "fleet"
MX1 = [str(DATA / "mx1" / n) for n in ("mail.log", "mail.log.1", "mail.log.2.gz")]  # as `mail.log*` lists them
MX2, MX3, CENTRAL = str(DATA / "mx2" / "mail.log"), str(DATA / "mx3" / "mail.log"), str(DATA / "central" / "syslog")
ABUSER, SHARED = "45.155.205.17", "185.12.64.3"
INNOCENTS = {"81.2.69.142": 40, "89.160.20.112": 40, "2a02:2e0:3fe:1001:302::1": 40, SHARED: 54}
CONFIG = Config(local_domains=("mx1.example", "mx2.example", "mx3.example"))


def run(*paths: str):
    return replay(list(paths), CONFIG, year=2025)


def blocks(result) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(d.kind, d.target, d.hosts) for d in result.decisions if d.action == "block"]


def test_the_data_is_what_make_fleet_writes(tmp_path: Path):
    work = tmp_path / "fleet"
    shutil.copytree(DATA, work)
    subprocess.run([sys.executable, str(work / "make_fleet.py")], check=True)  # writes next to itself
    for path in sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix != ".py"):
        new = work / path.relative_to(DATA)
        read = gzip.decompress if path.suffix == ".gz" else bytes
        assert read(new.read_bytes()) == read(path.read_bytes()), path


def test_no_single_host_log_crosses_the_client_rule():
    for paths in (MX1, [MX2], [MX3]):
        result = run(*paths)
        assert blocks(result) == []
        assert dict(result.tally.clients.top())[ABUSER] == 25


def test_the_fleet_of_three_files_blocks_the_abuser_and_names_the_three_hosts():
    result = run(*MX1, MX2, MX3)
    assert blocks(result) == [("client", ABUSER, ("mx1", "mx2", "mx3"))]
    counts = dict(result.tally.clients.top())
    assert counts[ABUSER] == 75  # the sixtieth crosses; a replay counts on
    for client, n in INNOCENTS.items():  # colliding queue ids are not mixed up across hosts
        assert counts[client] == n
    assert set(result.hosts) == {"mx1", "mx2", "mx3"}
    assert result.totals.relayed == 75 + sum(INNOCENTS.values())


def test_a_central_syslog_file_gives_the_same_answer():
    result = run(CENTRAL)
    fleet_result = run(*MX1, MX2, MX3)
    assert blocks(result) == blocks(fleet_result)
    assert dict(result.tally.clients.top()) == dict(fleet_result.tally.clients.top())
    assert result.hosts == fleet_result.hosts


def test_without_the_host_in_the_key_colliding_queue_ids_would_mix_clients():
    """The merge interleaves the hosts' messages; the same queue id on two hosts stays two messages."""
    result = run(MX2, MX3)
    counts = dict(result.tally.clients.top())
    assert counts[ABUSER] == 50 and counts["89.160.20.112"] == 40 and counts["2a02:2e0:3fe:1001:302::1"] == 40


def test_one_hosts_rotated_files_are_read_oldest_first_whatever_the_order_given():
    plan = fleet.plan([*MX1, MX2, MX3], _parser)
    assert plan == [[MX1[2], MX1[1], MX1[0]], [MX2], [MX3]]
    # a message cut by each rotation is still joined: all of mx1's mail is counted
    assert run(*MX1).totals.relayed == 25 + 40 + 18


def test_the_merge_follows_the_lines_time_across_files():
    merged = [e.time for e, _ in fleet.merged([[MX2], [MX3]], _parser) if e is not None and e.time]
    assert merged == sorted(merged)  # mx3's clock is behind: its lines are merged where its stamps put them


def _parser(path: str):
    from relaywatch.core.parse import LineParser, YearResolver

    return LineParser(YearResolver(2025))


def test_rotation_base_names():
    assert fleet.rotation_base("/var/log/mail.log.2.gz") == "/var/log/mail.log"
    assert fleet.rotation_base("/var/log/maillog-20251201.gz") == "/var/log/maillog"
    assert fleet.rotation_base("/var/log/mail.log") == "/var/log/mail.log"


def test_the_reports_say_which_hosts_were_read():
    result = run(*MX1, MX2, MX3)
    text = to_text(result)
    assert "3 hosts, replayed as one fleet: mx1 (" in text
    assert "evidence from hosts mx1, mx2, mx3" in text
    doc = json.loads(to_json(result))
    assert [h["host"] for h in doc["hosts"]] == ["mx1", "mx2", "mx3"]
    assert all(h["postfix_lines"] > 0 for h in doc["hosts"])
    assert [d["hosts"] for d in doc["decisions"] if d["action"] == "block"] == [["mx1", "mx2", "mx3"]]


def test_one_hosts_report_is_unchanged_but_for_the_added_json_keys():
    result = run(MX2)
    assert "fleet" not in to_text(result) and "evidence from" not in to_text(result)
    assert [h["host"] for h in json.loads(to_json(result))["hosts"]] == ["mx2"]
    assert result.decisions == [] and run(MX2).hosts == result.hosts


def test_the_cli_replays_several_files_as_a_fleet_in_every_format(tmp_path: Path):
    cfg = config_file(tmp_path)
    args = ["replay", "-c", str(cfg), "--year", "2025", *MX1, MX2, MX3]
    doc = json.loads(CliRunner().invoke(main, [*args, "--format", "json"], catch_exceptions=False).output)
    assert [(d["kind"], d["target"], d["hosts"]) for d in doc["decisions"] if d["action"] == "block"] == [
        ("client", ABUSER, ["mx1", "mx2", "mx3"])]
    html = CliRunner().invoke(main, [*args, "--format", "html"], catch_exceptions=False).output
    assert "evidence from hosts mx1, mx2, mx3" in html and "3 hosts, replayed as one fleet" in html


def test_a_decision_keeps_its_hosts_in_the_state_database(tmp_path: Path):
    store = Store(tmp_path / "state.db")
    result = run(*MX1, MX2, MX3)
    store.commit_batch([], result.decisions)
    store.close()
    store = Store(tmp_path / "state.db")
    assert [d.hosts for d in store.decisions()] == [d.hosts for d in result.decisions]
    assert ("mx1", "mx2", "mx3") in [d.hosts for d in store.decisions()]
    store.close()


def test_an_older_state_database_gets_the_hosts_column(tmp_path: Path):
    old = tmp_path / "state.db"
    shutil.copy(Path(__file__).parent / "data" / "state-before-issue14.db", old)
    store = Store(old)
    before = store.decisions()
    assert before and all(d.hosts == () for d in before)
    store.close()


def test_the_sqlite_store_knows_its_own_host_alone(tmp_path: Path):
    store = Store(tmp_path / "state.db", host="mx7")  # [fleet] host, as open_store passes it
    assert store.hosts() == []  # never ran
    now = time.time()
    store.status.put(DaemonStatus(pid=os.getpid(), heartbeat=now, source="journal", caught_up=False,
                                  last_log_time=now - 12))
    store.commit_batch([], [], ("journal", {"cursor": "s=1;i=2"}))
    [row] = store.hosts()
    assert row.last_contact == now and row.lag_s == 12 and row.position == {"source": "journal", "cursor": "s=1;i=2"}
    assert row.host == "mx7"
    store.close()


class _FleetStore(Store):
    """The SQLite store as a shared one would answer `hosts()` (t18-store's PostgreSQL store does)."""

    rows: list[HostRow] = []

    def hosts(self) -> list[HostRow]:
        return self.rows


def test_status_shows_each_host_its_lag_and_last_contact(tmp_path: Path):
    now = time.time()
    store = _FleetStore(tmp_path / "state.db")
    store.rows = [HostRow("mx1", now - 1, 0.0, {"source": "file:/var/log/mail.log", "inode": 5, "offset": 1234}),
                  HostRow("mx2", now - 300, 42.0, {"source": "journal", "cursor": "s=abc;i=9"}),
                  HostRow("mx3", None, None, None)]
    info = status_mod.gather(store, now)
    text = status_mod.to_text(info)
    assert "fleet: 3 hosts share this state" in text
    assert "mx1" in text and "caught up; reading /var/log/mail.log, offset 1,234 (inode 5)" in text
    assert "mx2" in text and "last contact 5 min ago (STALE" in text and "behind by 42 s" in text
    assert "never heard from" in text
    assert [h["host"] for h in json.loads(status_mod.to_json(info))["hosts"]] == ["mx1", "mx2", "mx3"]
    store.rows = store.rows[:1]
    assert "fleet" not in status_mod.to_text(status_mod.gather(store, now))  # one host: as before
    store.close()


def test_check_answers_for_the_fleet_with_the_counts_summed(tmp_path: Path):
    from relaywatch.core.rules import BUCKET_S
    from relaywatch.model import CountRow

    t = datetime_2025_11_30_10_05()
    rows = [CountRow("client", int(t // BUCKET_S), ABUSER, 25), CountRow("client", int(t // BUCKET_S) + 1, ABUSER, 50),
            CountRow("client", int(t // BUCKET_S), SHARED, 54), CountRow("relay_denied", int(t // BUCKET_S), ABUSER, 3)]
    assert recent("client", ABUSER, t - 600, rows).relayed == 75
    assert recent("client", ABUSER, t - 600, rows).relay_denied == 3
    assert recent("subnet", "45.155.0.0/16", t - 600, rows).relayed == 75
    cfg = config_file(tmp_path)
    store = Store(tmp_path / "state.db")
    result = run(*MX1, MX2, MX3)
    from relaywatch.store.records import BlockRow

    [d] = [d for d in result.decisions if d.action == "block"]
    store.add_block(BlockRow(d.kind, d.target, "relay flood", d.rule, time.time() - 60, time.time() + 3600))
    store.commit_batch([CountRow("client", int(time.time() // BUCKET_S), ABUSER, 75)],
                       [type(d)(**{**{f: getattr(d, f) for f in d.__slots__}, "time": time.time() - 60})])
    store.close()
    out = CliRunner().invoke(main, ["check", "-c", str(cfg), ABUSER], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "evidence from hosts mx1, mx2, mx3" in out.output
    assert "75 relayed recipients" in out.output
    doc = json.loads(CliRunner().invoke(main, ["check", "-c", str(cfg), "--json", ABUSER]).output)
    assert doc["recent"]["relayed"] == 75


def datetime_2025_11_30_10_05() -> float:
    from datetime import UTC, datetime

    return datetime(2025, 11, 30, 10, 5, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("shift", [0, 1])
def test_innocents_are_never_blocked_in_any_combination(shift: int):
    files = [[*MX1], [MX2], [MX3]]
    files = files[shift:] + files[:shift]
    result = run(*[p for group in files for p in group])
    assert {d.target for d in result.decisions if d.action == "block"} == {ABUSER}
