"""A private Postfix instance in a temp directory, for end-to-end tests.

STYLE.md's recipe: own config, queue and data directories, one smtpd on a free
127.0.0.1 port, mail relayed to Postfix's own smtp-sink on another loopback port,
logging to a file through postlogd. Loopback is in `mynetworks`, so loopback
clients may relay (the seed's hole); the client access map is consulted first.
It never touches /etc/postfix, never listens beyond 127.0.0.1 and needs no DNS.
Run as root (Postfix's master must start as root).

Map type "pgsql": no map file; the client and SASL lookups are `pgsql:` tables whose .cf
files (the test's text, e.g. pgsql_maps.cf_text for a private PostgreSQL) are written
0640 root:postfix, and SASL logins (XCLIENT LOGIN) are checked with check_sasl_access.
"""

from __future__ import annotations

import grp
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from relaywatch.postfix.mapkeys import MapSpec

POSTFIX = "/usr/sbin/postfix"
POSTMAP = "/usr/sbin/postmap"
SMTP_SINK = "/usr/sbin/smtp-sink"

# Mail to this domain is relayed (not local): it proves relaying, as in the seed.
REMOTE_RCPT = "victim@hanmail.example"
# Mail to this domain waits in the deferred queue: its transport points at a loopback
# port the rig holds bound but never listens on, so every connection is refused.
UNREACHABLE_DOMAIN = "unreachable.example"

_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = rw{tag}.relaywatch.test
mydomain = relaywatch.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4, ipv6
# Loopback may relay: the seed's open-relay hole. The documentation prefix lets
# XCLIENT-supplied IPv6 clients relay too (no IPv6 packet is ever sent).
mynetworks = 127.0.0.0/8 [2001:db8::]/32
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_peername_lookup = no
smtpd_client_restrictions = check_client_access {map}
{extra}smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relayhost = [127.0.0.1]:{sink_port}
transport_maps = inline:{{ {unreachable}=smtp:[127.0.0.1]:{dead_port} }}
smtp_dns_support_level = disabled
smtp_host_lookup = native
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
biff = no
smtputf8_enable = no
"""


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postfix_installed() -> bool:
    return all(os.access(p, os.X_OK) for p in (POSTFIX, POSTMAP, SMTP_SINK))


@dataclass
class PostfixRig:
    """A running private Postfix; `stop()` always leaves no process behind."""

    root: Path
    port: int
    sink_port: int
    reject_list: MapSpec
    sasl_list: MapSpec | None = None  # pgsql rigs: the check_sasl_access table
    pgsql_cf: dict[str, str] = field(default_factory=dict, repr=False)  # "client"/"sasl" -> .cf text
    _sink: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _dead: socket.socket | None = field(default=None, repr=False)

    @property
    def config_directory(self) -> str:
        return str(self.root / "etc")

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    @property
    def master_pid_file(self) -> Path:
        return self.root / "queue" / "pid" / "master.pid"

    @classmethod
    def start(cls, map_type: str = "hash", pgsql_cf: dict[str, str] | None = None) -> PostfixRig:
        # A short path: Postfix's unix sockets live under it (108-byte limit).
        root = Path(tempfile.mkdtemp(prefix="rw-pf-"))
        root.chmod(0o755)  # Postfix daemons drop root; let them traverse it
        etc = root / "etc"
        etc.mkdir()
        (root / "queue").mkdir()  # `postfix start` fills it, with the right owners
        if map_type == "pgsql":
            if pgsql_cf is None:
                raise ValueError("a pgsql rig needs the .cf texts: pgsql_cf={'client': ..., 'sasl': ...}")
            spec = MapSpec("pgsql", str(etc / "relaywatch-clients.cf"))
            sasl: MapSpec | None = MapSpec("pgsql", str(etc / "relaywatch-sasl.cf"))
        else:
            spec, sasl = MapSpec(map_type, str(etc / "reject_list")), None
        rig = cls(root=root, port=free_port(), sink_port=free_port(), reject_list=spec, sasl_list=sasl,
                  pgsql_cf=dict(pgsql_cf or {}))
        try:
            rig._start()
        except BaseException:
            rig.stop()
            raise
        return rig

    def _start(self) -> None:
        etc = Path(self.config_directory)
        # Bound, not listening: connections are refused, and nobody else can take the port.
        self._dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._dead.bind(("127.0.0.1", 0))
        extra = ""
        if self.sasl_list is not None:
            extra = f"smtpd_recipient_restrictions = check_sasl_access {self.sasl_list}\nsmtpd_sasl_auth_enable = yes\n"
        (etc / "main.cf").write_text(
            _MAIN_CF.format(root=self.root, tag=os.getpid(), map=self.reject_list, sink_port=self.sink_port,
                            unreachable=UNREACHABLE_DOMAIN, dead_port=self._dead.getsockname()[1], extra=extra)
        )
        (etc / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        # Postfix commands re-read a main.cf changed in the last ~2 s until it
        # looks stable (300 ms naps, measured ~2 s per command): backdate it.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(etc / name, (past, past))
        if self.reject_list.type == "pgsql":
            assert self.sasl_list is not None
            self.write_cf(self.reject_list, self.pgsql_cf["client"])
            self.write_cf(self.sasl_list, self.pgsql_cf["sasl"])
        else:
            Path(self.reject_list.path).write_text("")
        if self.reject_list.type not in ("cidr", "pgsql"):
            self._postfix(POSTMAP, str(self.reject_list))
        self._sink = subprocess.Popen(
            [SMTP_SINK, "-u", "postfix", f"127.0.0.1:{self.sink_port}", "100"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._postfix(POSTFIX, "start")
        self._wait_for_banner(self.port)
        self._wait_for_banner(self.sink_port)

    @staticmethod
    def write_cf(spec: MapSpec, text: str) -> None:
        """A pgsql: client file as install-maps leaves it: 0640 root:postfix (it holds a password)."""
        path = Path(spec.path)
        path.write_text(text)
        os.chown(path, 0, grp.getgrnam("postfix").gr_gid)
        path.chmod(0o640)

    def reload(self) -> None:
        """`postfix reload`: new smtpd processes (wait_for_exit(pids) for the old ones)."""
        self._postfix(POSTFIX, "reload")

    def _postfix(self, binary: str, *args: str) -> None:
        done = subprocess.run(
            [binary, "-c", self.config_directory, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{binary} {' '.join(args)} failed: {done.stderr.strip()} {done.stdout.strip()}")

    @staticmethod
    def _wait_for_banner(port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    if s.recv(512).startswith(b"220"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answers SMTP on 127.0.0.1:{port}")
            time.sleep(0.05)

    def send(
        self,
        source_ip: str,
        sender: str = "journeypark@hananet.example",
        recipients: tuple[str, ...] = (REMOTE_RCPT,),
        *,
        xclient_addr: str | None = None,
        xclient_login: str | None = None,
    ) -> tuple[int, str]:
        """One new SMTP session from `source_ip` (127.0.0.0/8 only): the final reply.

        Returns the first refusal (code, text) instead of raising, or DATA's 250.
        `xclient_addr` makes smtpd evaluate its restrictions for another client
        address (Postfix XCLIENT), so IPv6 keys can be tested over loopback;
        `xclient_login` makes the session SASL-authenticated as that name
        (logged as `sasl_username=`, kept in the queue file), with no SASL server.
        """
        if not source_ip.startswith("127."):
            raise ValueError("the rig sends from loopback only")
        with smtplib.SMTP(host="127.0.0.1", port=self.port, source_address=(source_ip, 0), timeout=30) as smtp:
            smtp.ehlo("client.relaywatch.test")
            if xclient_addr is not None or xclient_login is not None:
                attrs = f"ADDR={xclient_addr or source_ip} NAME=[UNAVAILABLE]"
                code, msg = smtp.docmd("XCLIENT", attrs + (f" LOGIN={xclient_login}" if xclient_login else ""))
                if code != 220:
                    return code, msg.decode()
                smtp.ehlo("client.relaywatch.test")
            code, msg = smtp.mail(sender)
            if code != 250:
                return code, msg.decode()
            for rcpt in recipients:
                code, msg = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    return code, msg.decode()
            code, msg = smtp.data(f"From: <{sender}>\r\nSubject: relaywatch test\r\n\r\nhello\r\n")
            return code, msg.decode()

    def smtpd_pids(self) -> set[int]:
        """The smtpd processes of this instance now (children of its master)."""
        master = self.master_pid_file.read_text().split()[0]
        pids = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                pid, rest = stat.read_text().split(" (", 1)
            except OSError:
                continue
            comm, fields = rest.rsplit(") ", 1)
            if comm == "smtpd" and fields.split()[1] == master and fields[0] != "Z":
                pids.add(int(pid))
        return pids

    def wait_for_exit(self, pids: set[int], timeout: float = 10.0) -> None:
        """Wait until `pids` (smtpd processes from before a `postfix reload`) are gone.

        Reload is asynchronous: an idle smtpd may still serve one more session with
        the old tables (measured with a cidr map: 1 session in 150).
        """
        if not _wait_gone(pids, timeout):
            raise RuntimeError(f"smtpd processes {sorted(pids)} did not exit after reload")

    def stop(self) -> None:
        """`postfix stop`, then make sure master and smtp-sink are gone (by PID)."""
        try:
            pid: int | None = int(self.master_pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = None  # master never started
        if pid is not None:
            subprocess.run(
                [POSTFIX, "-c", self.config_directory, "stop"], capture_output=True, timeout=60, check=False
            )
            _kill_and_wait(pid)
        if self._sink is not None:
            self._sink.terminate()
            try:
                self._sink.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._sink.kill()
                self._sink.wait(timeout=5)
            self._sink = None
        if self._dead is not None:
            self._dead.close()
            self._dead = None
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    """Wait for `pid` to exit after `postfix stop`; SIGKILL its process group if it lingers."""
    if _wait_gone({pid}, timeout):
        return
    # master leads its own process group (setsid): its children die with it.
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not _wait_gone({pid}, timeout):
        raise RuntimeError(f"Postfix master {pid} survived SIGKILL")


def _wait_gone(pids: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent, `postfix start`, exited).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
