"""The shape STYLE.md asks for, checked on the imports (AST): pure steps stay pure, each
third-party library lives behind one module, and the I/O modules do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "relaywatch"
PURE = {"model", "parse", "grammar", "replies", "logtime", "correlate", "destinations", "windows", "policy",
        "timeline", "digest", "report", "inline"}
# I/O modules by family: a family may share code (the followers reuse the replay reader,
# the map writer asks postconf for the default map type); families do not import each other.
IO_FAMILIES = {"sources": "sources", "follow": "sources", "journal": "sources", "store": "store",
               "postconf": "postfix", "postfix": "postfix", "hostaddrs": "postfix", "queue": "queue", "notify": "notify",
               "policyd": "policyd", "relayers": "policyd"}
THIRD_PARTY = {"click": "cli", "sqlite_utils": "store", "watchdog": "follow", "apprise": "notify"}
STDLIB_IO = {"subprocess", "socket", "sqlite3", "http", "urllib", "shutil"}


def imports(module: str) -> tuple[set[str], set[str]]:
    """(relaywatch modules, top-level outside packages) that `module` imports anywhere in its body."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                ours.update([node.module] if node.module else [a.name for a in node.names])
            else:
                theirs.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            theirs.update(a.name.split(".")[0] for a in node.names)
    return ours, theirs


def test_pure_modules_import_only_pure_modules_and_no_io():
    for module in PURE:
        ours, theirs = imports(module)
        assert ours <= PURE, (module, ours - PURE)
        assert not theirs & (set(THIRD_PARTY) | STDLIB_IO), (module, theirs)


def test_each_third_party_library_lives_in_one_module():
    for path in PACKAGE.glob("*.py"):
        _, theirs = imports(path.stem)
        for library, home in THIRD_PARTY.items():
            if library in theirs:
                assert path.stem == home, f"{path.stem} imports {library}; only {home} may"


def test_io_modules_do_not_import_other_io_families():
    for module, family in IO_FAMILIES.items():
        ours, _ = imports(module)
        others = {m for m in ours if IO_FAMILIES.get(m, family) != family}
        assert not others, (module, others)
