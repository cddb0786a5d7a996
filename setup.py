"""setuptools' part of Baton's build (the metadata is in pyproject.toml).

With ``BATON_COMPILE=1`` (build_backend/baton_build.py: a wheel build, never an editable one),
the replay path's modules (build_backend/compiled_modules.txt) are compiled with mypyc into one
group of C extensions installed next to their ``.py``; otherwise this adds nothing.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "build_backend"))
from baton_build import compile_requested  # noqa: E402

#: the repository folders that make up the ``baton`` package (pyproject.toml's package-dir)
FOLDERS = ("cli", "processors", "schemas", "sinks", "streams")


def _refuse(why: str) -> None:
    raise SystemExit(f"BATON_COMPILE=1: {why} (unset BATON_COMPILE for the pure-Python build)")


def _check_compiler() -> None:
    """A compiled build that cannot compile fails here, named, rather than later in gcc's
    words (or, worse, falls back to pure Python)."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        _refuse(f"no C compiler: {compiler!r} is not on PATH (install gcc)")
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        _refuse(f"no Python headers: {include / 'Python.h'} is missing (install python3-dev)")


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
