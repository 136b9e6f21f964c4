"""`relaywatch install-maps` for pgsql: maps on a real Postfix and PostgreSQL: the .cf files with a
read-only role (0640 root:postfix), the SQL the database owner runs, --dry-run, and a second run."""

from __future__ import annotations

import grp
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.core.blocks_table import DDL, READ_ROLE
from support.pgsql_blocks import insert, need_parts
from support.postfix_rig import PostfixRig
from support.postgres import PostgresServer

pytestmark = pytest.mark.postfix


@pytest.fixture
def rig(postgres_private: PostgresServer) -> Iterator[PostfixRig]:
    need_parts()
    own = PostfixRig.start("hash")
    try:
        yield own
    finally:
        own.stop()


def test_install_maps_writes_the_cf_files_and_prints_the_role(postgres_private: PostgresServer, rig: PostfixRig,
                                                              tmp_path: Path) -> None:
    pg = postgres_private
    pg.dbname = "relaywatch"
    pg.psql(DDL)  # relaywatch's store creates it
    hba = pg.root / "data" / "pg_hba.conf"
    hba.write_text(f"host all {READ_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    pg.psql("SELECT pg_reload_conf()")
    etc = rig.config_directory
    clients, sasl = f"{etc}/relaywatch-clients.cf", f"{etc}/relaywatch-sasl.cf"
    cfg = tmp_path / "relaywatch.toml"
    cfg.write_text(f'[state]\ndatabase = "{pg.url()}"\n[postfix]\nconfig_directory = "{etc}"\n'
                   f'client_access_map = "pgsql:{clients}"\nsasl_access_map = "pgsql:{sasl}"\n')

    dry = CliRunner().invoke(main, ["install-maps", "--dry-run", "-c", str(cfg)])
    assert dry.exit_code == 0, dry.output
    assert not os.path.exists(clients) and not os.path.exists(sasl)
    assert f"# write {clients} (mode 0640 root:postfix): hosts = inet:127.0.0.1:{pg.port}, dbname = relaywatch, " \
           f"user = {READ_ROLE}" in dry.output
    assert f"CREATE ROLE {READ_ROLE} LOGIN PASSWORD '<generated when the .cf files are written>';" in dry.output
    assert f"postconf -c {etc} -e 'smtpd_client_restrictions = check_client_access pgsql:{clients}" in dry.output

    pids = rig.smtpd_pids()
    done = CliRunner().invoke(main, ["install-maps", "-c", str(cfg)])
    assert done.exit_code == 0, done.output
    rig.wait_for_exit(pids)  # install-maps reloaded Postfix
    for path in (clients, sasl):
        st = os.stat(path)
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, grp.getgrnam("postfix").gr_gid)
    text = Path(clients).read_text()
    assert f"hosts = inet:127.0.0.1:{pg.port}\nuser = {READ_ROLE}\n" in text and "dbname = relaywatch\n" in text
    sql = [line for line in done.output.splitlines() if line.startswith(("CREATE ROLE", "GRANT"))]
    assert sql[1] == f"GRANT SELECT ON relaywatch_blocks TO {READ_ROLE};"
    password = re.search(r"PASSWORD '([^']+)'", sql[0])
    assert password is not None and f"password = {password[1]}\n" in text

    # who may run it: not the database's owner (the daemons' role), which cannot create roles
    comment = next(line for line in done.output.splitlines() if line.startswith("-- in database"))
    assert "as a superuser or a role with CREATEROLE" in comment and "owner" not in comment, comment
    pg.psql("CREATE ROLE rw_owner LOGIN; ALTER TABLE relaywatch_blocks OWNER TO rw_owner")
    with pytest.raises(subprocess.CalledProcessError) as refused:
        pg.psql(f"SET ROLE rw_owner; {sql[0]}")
    assert "permission denied to create role" in refused.value.stderr
    pg.psql("\n".join(sql))  # what the database's administrator runs
    insert(pg, "client", "218.144.1.2")
    insert(pg, "sasl_user", "alice@woodelf.example")
    code, reply = rig.send("127.0.0.9", xclient_addr="218.144.1.2")
    assert code == 554 and "blocked by relaywatch" in reply
    query = subprocess.run(["/usr/sbin/postmap", "-c", etc, "-q", "alice@woodelf.example", f"pgsql:{sasl}"],
                           capture_output=True, text=True)
    assert query.stdout.startswith("REJECT blocked by relaywatch")
    with pytest.raises(subprocess.CalledProcessError) as denied:  # the role only reads
        pg.psql(f"SET ROLE {READ_ROLE}; DELETE FROM relaywatch_blocks")
    assert "permission denied for table relaywatch_blocks" in denied.value.stderr

    before = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in (clients, sasl, f"{etc}/main.cf")}
    again = CliRunner().invoke(main, ["install-maps", "-c", str(cfg)])
    assert again.exit_code == 0, again.output
    assert "nothing to change" in again.output and sql[0] in again.output  # the same password
    assert {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in before} == before
