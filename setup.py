"""setuptools' part of Baton's build (the metadata is in pyproject.toml).

When the build compiles (build_backend/baton_build.py: a wheel build, never an editable one;
``BATON_COMPILE=1``, or unset where a C compiler and the Python headers are found), the replay
path's modules (build_backend/compiled_modules.txt) are compiled with mypyc into one group of
C extensions installed next to their ``.py``; otherwise this adds nothing.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "build_backend"))
from baton_build import compile_requested, compiler_missing  # noqa: E402

#: the repository folders that make up the ``baton`` package (pyproject.toml's package-dir)
FOLDERS = ("cli", "processors", "schemas", "sinks", "streams")


def _refuse(why: str) -> None:
    raise SystemExit(f"baton: cannot compile: {why} (BATON_COMPILE=0 builds pure Python)")


def _check_compiler() -> None:
    """A compiled build that cannot compile fails here, named, rather than later in gcc's
    words (the backend builds pure Python then unless BATON_COMPILE=1)."""
    missing = compiler_missing()
    if missing is not None:
        _refuse(missing)


def _compiled_extensions() -> list:
    """mypyc's extensions for the listed modules, compiled from a staged ``baton`` tree (the
    repository's folders are the package's subpackages under other names)."""
    _check_compiler()
    try:
        from mypyc.build import mypycify
    except ImportError:
        _refuse("mypy (mypyc) is not in the build environment; pip adds it, or install mypy")
    listed = (HERE / "build_backend" / "compiled_modules.txt").read_text().splitlines()
    modules = [line.strip() for line in listed if line.strip() and not line.startswith("#")]
    stage = Path("build") / "mypyc_src"
    shutil.rmtree(stage, ignore_errors=True)
    for folder in FOLDERS:
        shutil.copytree(HERE / folder, stage / "baton" / folder)
    (stage / "baton" / "__init__.py").write_text("")
    config = f"--config-file={HERE / 'build_backend' / 'mypyc.ini'}"
    paths = [str(stage / "baton" / module) for module in modules]
    return mypycify([config, *paths], opt_level="3", group_name="baton_core")


setup(ext_modules=_compiled_extensions() if compile_requested() else [])
