"""The private PostgreSQL rig itself: it starts, answers over TCP on 127.0.0.1, restarts, and
Postfix's own pgsql: client reads a table from it (the fleet's tests build on these three)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.postgres import PostgresServer


def test_fresh_database_answers_sql(postgres: PostgresServer) -> None:
    postgres.psql("CREATE TABLE t (k text PRIMARY KEY, v text); INSERT INTO t VALUES ('a', 'b')")
    assert postgres.psql("SELECT v FROM t WHERE k = 'a'").strip() == "b"
    assert postgres.url().startswith("postgresql://postgres@127.0.0.1:")


def test_restart_keeps_data_and_port(postgres_private: PostgresServer) -> None:
    pg = postgres_private
    pg.psql("CREATE TABLE t (n int); INSERT INTO t VALUES (7)")
    old_pid, port = pg.pid, pg.port
    pg.restart()
    assert pg.pid != old_pid and pg.port == port
    assert pg.psql("SELECT n FROM t").strip() == "7"


def test_postfix_pgsql_table_reads_the_database(postgres: PostgresServer, pgsql_maps: None, tmp_path: Path) -> None:
    postgres.psql("CREATE TABLE blocks (key text PRIMARY KEY, action text);"
                  " INSERT INTO blocks VALUES ('218.144', 'REJECT relay abuse')")
    (tmp_path / "main.cf").write_text("")
    cf = tmp_path / "clients.cf"
    cf.write_text(f"hosts = 127.0.0.1:{postgres.port}\nuser = postgres\npassword =\n"
                  f"dbname = {postgres.dbname}\nquery = SELECT action FROM blocks WHERE key = '%s'\n")
    def query(key: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/sbin/postmap", "-c", str(tmp_path), "-q", key, f"pgsql:{cf}"],
                              capture_output=True, text=True)
    hit, miss = query("218.144"), query("218.145")
    assert (hit.returncode, hit.stdout.strip()) == (0, "REJECT relay abuse")
    assert miss.returncode == 1 and miss.stdout == ""
