"""Build relaywatch, its hot pure core compiled with mypyc where a C compiler exists.

Everything else is declared in pyproject.toml; this file only adds the compiled modules, listed
once there as [tool.relaywatch.compiled] modules. RELAYWATCH_COMPILE chooses:
  1     compile, or fail the build (no compiler, no Python.h, or a mypyc/compiler error);
  0     pure Python, the same modules as .py files only;
  auto  (the default) compile when a C compiler and Python.h are found, else pure Python with a
        note on stderr.
Once compiling has started, an error fails the build instead of falling back: a slower package
shipped in silence is how a broken toolchain would go unnoticed (RELAYWATCH_COMPILE=0 is the way
round it). Editable installs (`pip install -e`) are always pure: a compiled module beside its
source would be imported instead of it and hide every edit.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tomllib
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    with open(HERE / "pyproject.toml", "rb") as f:
        modules: list[str] = tomllib.load(f)["tool"]["relaywatch"]["compiled"]["modules"]
    return modules


def missing_toolchain() -> str | None:
    """What a compile would lack here, or None."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.exists():
        return f"no Python headers ({header}; Debian: apt-get install python3-dev)"
    return None


def compiling() -> bool:
    mode = os.environ.get("RELAYWATCH_COMPILE", "auto")
    if mode not in ("0", "1", "auto"):
        raise SystemExit(f"RELAYWATCH_COMPILE={mode!r}: expected 0, 1 or auto")
    if mode == "0":
        return False
    missing = missing_toolchain()
    if missing is None:
        return True
    if mode == "1":
        raise SystemExit(f"RELAYWATCH_COMPILE=1, but {missing}")
    print(f"relaywatch: {missing}: building the pure-Python form (RELAYWATCH_COMPILE=1 makes this an error)",
          file=sys.stderr)
    return False


class CompiledDistribution(Distribution):
    """Has extensions before build_ext has made them, so the wheel is tagged for this platform."""

    def has_ext_modules(self) -> bool:
        return True


# Commands that finalize build_ext (egg_info asks it for the manifest) but build no extension.
NOT_BUILDING = frozenset({"egg_info", "dist_info", "sdist", "editable_wheel"})


class MypycBuildExt(build_ext):
    """Runs mypyc only when extensions are really built: not for metadata, nor for editable installs."""

    def finalize_options(self) -> None:
        dist = self.distribution
        # editable_mode alone is not enough: setuptools finalizes build_ext before it sets the flag.
        if self.editable_mode or set(dist.commands) <= NOT_BUILDING:
            dist.ext_modules = []
        elif not dist.ext_modules:
            from mypyc.build import mypycify

            paths = [name.replace(".", "/") + ".py" for name in compiled_modules()]
            # group_name: the shared runtime library is relaywatch__mypyc, not a hash, at the top of site-packages
            dist.ext_modules = mypycify(paths, opt_level="3", group_name="relaywatch")
        super().finalize_options()

    def run(self) -> None:
        # An in-tree build/ still holds the .so of a module since taken off the list: the wheel would
        # ship it, and Python would import it instead of the module's source.
        if not (self.editable_mode or self.inplace):
            keep = {Path(p) for p in self.get_outputs()}
            for path in Path(self.build_lib).rglob("*.so"):
                if path not in keep:
                    path.unlink()
        super().run()


if compiling():
    setup(distclass=CompiledDistribution, cmdclass={"build_ext": MypycBuildExt})
else:
    setup()
