"""Read Postfix's effective configuration through `postconf` (never by parsing main.cf), and its
lookup tables through `postmap -q` (whatever their type)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from relaywatch.core.destinations import (
    DOMAIN_PARAMS,
    Destinations,
    DomainList,
    LocalDomains,
    Pattern,
    PostfixDomains,
    Source,
    split_list,
)
from relaywatch.model import PostfixError

log = logging.getLogger("relaywatch.postconf")

POSTCONF = "postconf"
POSTMAP = "postmap"
SBIN = ("/usr/sbin", "/usr/local/sbin")  # where Postfix's packages put postconf and postmap
RETRY_FAILED_S = 60.0  # a table Postfix could not read is asked again after this long


def _no_main_cf(config_directory: str | Path) -> bool:
    """`DIR/main.cf` does not exist: postconf would only say so, a second later (Postfix sleeps
    before every fatal exit; a replay on a machine without main.cf asked twice: 2 s of its wall time)."""
    try:
        os.stat(f"{config_directory}/main.cf")
    except FileNotFoundError:
        return True
    except OSError:
        return False  # unreadable here, perhaps not to postconf: let Postfix say
    return False


def _is_exe(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _command(name: str) -> tuple[str | None, str]:
    """The file `name` starts, looked up without starting a process (nor importing shutil): a path as
    given; a bare name in PATH, then in Postfix's own directories (a non-root login's PATH on Debian
    lacks /usr/sbin). With None, where it was looked for, for the error."""
    if "/" in name:
        return (name if _is_exe(name) else None), "no such executable file"
    dirs = [d for d in (*os.get_exec_path(), *SBIN) if d]
    found = next((path for d in dirs if _is_exe(path := os.path.join(d, name))), None)
    return found, f"not in {os.pathsep.join(dirs)}"


def _run(args: list[str], config_directory: str | Path | None) -> str:
    cmd = [POSTCONF]
    if config_directory is not None:
        cmd += ["-c", str(config_directory)]
    cmd += args
    binary, where = _command(POSTCONF)
    if binary is None:  # first: on a host without Postfix, say that rather than what it lacks
        raise PostfixError(f"{POSTCONF} not found: is Postfix installed? ({where})")
    if config_directory is not None and _no_main_cf(config_directory):  # postconf's own words, without the wait
        raise PostfixError(f"{' '.join(cmd)} failed: postconf: fatal: open {config_directory}/main.cf:"
                           " No such file or directory")
    import subprocess  # not needed (nor its start paid) where there is no main.cf

    try:
        done = subprocess.run([binary, *cmd[1:]], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:  # found a moment ago: gone since, or a script whose interpreter is missing
        raise PostfixError(f"could not start {binary}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise PostfixError(f"{' '.join(cmd)} took longer than 30 s") from exc
    if done.returncode != 0:
        raise PostfixError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            out[name.strip()] = value.strip()
        elif line.endswith(" ="):
            out[line[:-2].strip()] = ""
    return out


def postconf(
    config_directory: str | Path | None = None, names: tuple[str, ...] = (), *, explicit_only: bool = False,
    expand: bool = True,
) -> dict[str, str]:
    """Effective main.cf parameters, `$name` references expanded (`postconf -x`; as written with
    `expand=False`); with `explicit_only`, only those set in main.cf (`-n`)."""
    return _pairs(_run([*(["-x"] if expand else []), *(["-n"] if explicit_only else []), *names], config_directory))


def postconf_services(config_directory: str | Path | None = None, *, expand: bool = True) -> dict[str, dict[str, str]]:
    """Per-service `-o` overrides from master.cf (`postconf -P -x`; as written with `expand=False`),
    keyed by "service/type"."""
    services: dict[str, dict[str, str]] = {}
    for key, value in _pairs(_run(["-P", *(["-x"] if expand else [])], config_directory)).items():
        service, _, rest = key.partition("/")
        kind, _, param = rest.partition("/")
        if param:
            services.setdefault(f"{service}/{kind}", {})[param] = value
    return services


def _postmap(args: list[str], stdin: str, config_directory: str | Path | None) -> str:
    cmd = [POSTMAP, *(["-c", str(config_directory)] if config_directory is not None else []), *args]
    binary, where = _command(POSTMAP)
    if binary is None:
        raise PostfixError(f"{POSTMAP} not found: is Postfix installed? ({where})")
    import subprocess

    try:
        done = subprocess.run([binary, *cmd[1:]], input=stdin, capture_output=True, text=True, timeout=30,
                              check=False)
    except OSError as exc:
        raise PostfixError(f"could not start {binary}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise PostfixError(f"{' '.join(cmd)} took longer than 30 s") from exc
    # exit 1 is both "none found" and a fatal error: only the error says something on stderr
    failed = done.returncode not in (0, 1) or any(
        word in done.stderr for word in ("fatal:", "error:", "panic:", "lookup problem"))
    if failed:
        raise PostfixError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def postmap_lookup(table: str, keys: tuple[str, ...], config_directory: str | Path | None = None) -> bool:
    """Whether `table` (any type Postfix reads: hash:, lmdb:, cdb:, regexp:, pgsql:, ...) has any
    of `keys`, asked of Postfix itself in one `postmap -q -` process."""
    return bool(_postmap(["-q", "-", table], "".join(f"{k}\n" for k in keys), config_directory).strip())


# indexed files postmap can list whole (`postmap -s`), by type: the suffix of the file Postfix opens
_LISTABLE = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}


class TableReader:
    """Answers `lookup(table, keys)`: an indexed file (hash:, btree:, lmdb:, cdb:) is listed once with
    `postmap -s` and listed again when its file changes, so that a flood to a thousand new domains
    costs no thousand processes; every other type (regexp:, pcre:, pgsql:, proxy:, ...) is asked
    per domain with `postmap -q`. Only keys that can name a domain are kept (none with an @)."""

    def __init__(self, config_directory: str | Path | None) -> None:
        self.config_directory = config_directory
        self._listed: dict[str, tuple[float, frozenset[str]]] = {}  # table -> (file mtime, domain keys)

    def lookup(self, table: str, keys: tuple[str, ...]) -> bool:
        kind, _, path = table.partition(":")
        suffix = _LISTABLE.get(kind)
        if suffix is None or not path.startswith("/"):
            return postmap_lookup(table, keys, self.config_directory)
        try:
            mtime = os.stat(path + suffix).st_mtime
        except OSError:
            return postmap_lookup(table, keys, self.config_directory)  # let Postfix say what is wrong
        listed = self._listed.get(table)
        if listed is None or listed[0] != mtime:
            keys_listed = (line.split(None, 1)[0].lower() for line in
                           _postmap(["-s", table], "", self.config_directory).splitlines() if line.strip())
            listed = self._listed[table] = (mtime, frozenset(k for k in keys_listed if "@" not in k))
        return any(k in listed[1] for k in keys)


def _expand_files(patterns: tuple[Pattern, ...]) -> tuple[Pattern, ...]:
    """A /file/name in a list stands for the patterns in that file, as Postfix reads it."""
    out: list[Pattern] = []
    for p in patterns:
        if not p.text.startswith("/"):
            out.append(p)
            continue
        try:
            text = Path(p.text).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise PostfixError(f"cannot read {p.text}, named in a domain list: {exc.strerror or exc}") from exc
        lines = (line.partition("#")[0] for line in text.splitlines())
        out.extend(Pattern(q.text, q.negated != p.negated) for q in split_list(" ".join(lines)))
    return tuple(out)


def postfix_domains(config_directory: str | Path | None,
                    clock: Callable[[], float] = time.monotonic) -> PostfixDomains:
    """The domains this Postfix accepts mail for (final or relay destination), as Postfix
    matches them: `postconf -x` for the lists, `postmap -q` per domain for their tables."""
    params = postconf(config_directory, (*DOMAIN_PARAMS, "parent_domain_matches_subdomains"))
    parent = {name.strip() for name in re.split(r"[\s,]+", params.get("parent_domain_matches_subdomains", ""))}
    lists = tuple(
        DomainList(name, _expand_files(split_list(params.get(name, ""))), exact_only=name == "mydestination",
                   parent_style=name in parent)
        for name in DOMAIN_PARAMS
    )
    failing: dict[str, float] = {}  # table -> when it last failed
    tables = TableReader(config_directory)

    def lookup(table: str, keys: tuple[str, ...]) -> bool | None:
        # A failing postmap costs a second (Postfix sleeps before a fatal exit): asked per
        # delivery, one unreadable table would stall the pipeline. Ask it again only later.
        failed = failing.get(table)
        if failed is not None and clock() - failed < RETRY_FAILED_S:
            return None
        try:
            found = tables.lookup(table, keys)
        except PostfixError as exc:
            if failed is None:
                log.warning("cannot ask Postfix whether a domain is local (%s): until it answers, mail for such "
                            "domains is judged from the log; [postfix] local_domains avoids the question", exc)
            failing[table] = clock()
            return None
        failing.pop(table, None)
        return found

    return PostfixDomains(lists, lookup, clock)


def local_destinations(option: tuple[str, ...], configured: tuple[str, ...],
                       config_directory: str | Path | None) -> tuple[Destinations, Source, str]:
    """The local domains, from the first source that has them: `--local-domain`, the config key,
    Postfix itself; else none (the correlator infers them from the log). With a description."""
    if option:
        return LocalDomains(option, known=True), Source.OPTION, ", ".join(option)
    if configured:
        return LocalDomains(configured, known=True), Source.CONFIG, ", ".join(configured)
    try:
        return postfix_domains(config_directory), Source.POSTFIX, f"postconf -c {config_directory or '(default)'}"
    except PostfixError as exc:
        reason = str(exc).rpartition("fatal: ")[2]
        return LocalDomains(), Source.LOG, f"postconf -c {config_directory or '(default)'}: {reason}"
