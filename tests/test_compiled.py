"""The compiled core: which modules mypyc compiles, and which form a test run really imports.

RELAYWATCH_EXPECT_COMPILED=1 (.ci/compiled, the suite against the installed wheel) or 0 (.ci/run's
suite against the editable install) makes the form an assertion, so that a suite that silently
imported the checkout, or an editable install shadowed by a stray .so, fails instead of passing
on the wrong code. Unset, only the list itself is checked.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["relaywatch"]["compiled"]["modules"]
EXPECT = os.environ.get("RELAYWATCH_EXPECT_COMPILED")
# Beyond the pure core, the replay's per-line path: the events and facts, the pipeline, the replay's loop and
# the report's sinks (in plain Python they were half of a compiled replay's CPU outside parse/correlate/detect).
PER_LINE = {"relaywatch.model.events", "relaywatch.engine", "relaywatch.replay", "relaywatch.reports.report",
            "relaywatch.reports.timeline", "relaywatch.reports.blockwatch"}


def is_compiled(path: str) -> bool:
    return path.endswith(tuple(EXTENSION_SUFFIXES))


def test_the_list_names_pure_core_modules_once() -> None:
    assert MODULES and len(set(MODULES)) == len(MODULES)
    for name in MODULES:
        assert name.startswith("relaywatch.core.") or name in PER_LINE, \
            f"{name}: only the pure core and the replay's per-line path are compiled"
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), f"{name}: no such module"


@pytest.mark.skipif(EXPECT != "1", reason="RELAYWATCH_EXPECT_COMPILED=1 only (.ci/compiled)")
def test_every_listed_module_is_the_installed_compiled_one() -> None:
    import relaywatch

    assert not Path(relaywatch.__file__).resolve().is_relative_to(ROOT), "the suite imported the checkout"
    for name in MODULES:
        path = importlib.import_module(name).__file__ or ""
        assert is_compiled(path), f"{name} is {path}, not compiled"
    # Subprocesses (`python -m relaywatch ...` in the CLI tests) start where pytest was started.
    shown = subprocess.run([sys.executable, "-c", f"import {MODULES[0]} as m; print(m.__file__)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert is_compiled(shown) and not Path(shown).resolve().is_relative_to(ROOT), shown


@pytest.mark.skipif(EXPECT != "0", reason="RELAYWATCH_EXPECT_COMPILED=0 only (.ci/run)")
def test_every_listed_module_is_python_source() -> None:
    for name in MODULES:
        path = importlib.import_module(name).__file__ or ""
        assert path.endswith(".py"), f"{name} is {path}: a compiled module would hide edits to the source"
