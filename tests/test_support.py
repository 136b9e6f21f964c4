"""tests/support/ is shared by the tests and bench/: it may be imported from bench/, never the reverse,
and the package never imports the tests."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_support_imports_neither_bench_nor_the_tests():
    bench = {p.stem for p in (ROOT / "bench").glob("*.py")}
    tests = {p.stem for p in (ROOT / "tests").glob("*.py")}
    for path in sorted((ROOT / "tests" / "support").glob("*.py")):
        wrong = {n for n in imported(path) if n.split(".")[0] in bench | tests | {"bench", "tests"}}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_relaywatch_never_imports_the_test_helpers():
    for path in sorted((ROOT / "relaywatch").rglob("*.py")):
        assert not {n for n in imported(path) if n.split(".")[0] in {"support", "tests"}}, path
