"""The shape STYLE.md asks for, checked on the imports (AST): data flows one way through
layers, the core stays pure, each third-party library lives behind one module, and the
edge packages (sources, store, postfix, notify) do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "relaywatch"

# Lowest first. A module may import from its own layer's package and from lower layers only.
LAYERS = (
    {"model", "permissions", "wording"},  # values, errors, vocabulary; file trust; how things are written
    {"core"},  # pure: parse, correlate, windows, policy
    {"config"},
    {"sources", "store", "postfix", "notify"},  # the edges: one family each, not importing each other
    {"respond"},  # acting on decisions: block, hold, notify, check enforcement
    {"engine", "reports"},  # the pipeline, and the reports that are its sinks: neither imports the other
    {"daemon", "daemon_days", "policyd", "replay", "build"},
    {"cli", "__main__"},
)
EDGES = LAYERS[3]
APART = {("engine", "reports"), ("reports", "engine")}
THIRD_PARTY = {"click": "cli", "sqlite_utils": "store.sqlite", "watchdog": "sources.follow", "apprise": "notify.send",
               "psycopg": "store.postgres"}
STDLIB_IO = {"subprocess", "socket", "sqlite3", "http", "urllib", "shutil", "os", "io", "pathlib"}


def unit(module: str) -> str:
    """relaywatch.core.parse -> core; relaywatch.engine -> engine."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "relaywatch"


def layer_of(u: str) -> int:
    for i, units in enumerate(LAYERS):
        if u in units:
            return i
    raise AssertionError(f"relaywatch.{u} belongs to no layer: add it to LAYERS")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("relaywatch", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        out[name] = path
    return out


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(relaywatch modules, other top-level packages) imported anywhere in the module."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the house uses absolute ones)"
            if node.module == "relaywatch":
                ours.update(f"relaywatch.{a.name}" for a in node.names if a.name != "__version__")
            elif node.module.startswith("relaywatch."):
                ours.add(node.module)
            else:
                theirs.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            theirs.update(a.name.split(".")[0] for a in node.names)
    return ours, theirs


def test_every_import_goes_down_the_layers():
    wrong = set()
    for name, path in modules().items():
        if name == "relaywatch":
            continue
        src = unit(name)
        for target in imports(path)[0]:
            dst = unit(target)
            if dst == src:
                continue
            if layer_of(dst) > layer_of(src) or (src in EDGES and dst in EDGES) or (src, dst) in APART:
                wrong.add((src, dst))
    assert not wrong, sorted(wrong)


# socket's pure conversions between address text and bytes (glibc's, in C: netaddr's fast path), and no more
PURE_FROM_SOCKET = {"AF_INET6", "inet_pton", "inet_ntop"}


def from_socket(path: Path) -> set[str] | None:
    """The names imported `from socket`, None if socket itself is imported."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "socket" for a in node.names):
            return None
        if isinstance(node, ast.ImportFrom) and node.module == "socket":
            names.update(a.name for a in node.names)
    return names


def test_the_core_is_pure():
    for name, path in modules().items():
        if unit(name) == "core":
            ours, theirs = imports(path)
            assert all(unit(m) in {"core", "model", "wording"} for m in ours), (name, ours)
            socket_names = from_socket(path)
            if socket_names is not None and socket_names <= PURE_FROM_SOCKET:
                theirs.discard("socket")
            assert not theirs & (set(THIRD_PARTY) | STDLIB_IO), (name, theirs & (set(THIRD_PARTY) | STDLIB_IO))


def test_each_third_party_library_lives_in_one_module():
    for name, path in modules().items():
        _, theirs = imports(path)
        for library, home in THIRD_PARTY.items():
            if library in theirs:
                home_ok = name in (f"relaywatch.{home}", f"relaywatch.{home.split('.')[0]}")
                assert home_ok or name.startswith(f"relaywatch.{home}."), f"{name} imports {library}"  # cli: a package
