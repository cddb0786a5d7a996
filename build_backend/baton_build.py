"""Baton's build backend: setuptools, plus mypyc on the replay path where it can compile.

A wheel build (``pip install .``, ``pip wheel .``, the Docker image) compiles the modules in
``build_backend/compiled_modules.txt`` with mypyc when a C compiler and the Python headers are
found (``BATON_COMPILE`` unset: *auto*): pip adds mypy to the build requirements and
``setup.py`` compiles; if compiling fails there, the wheel is built again in pure Python,
saying so on stderr. ``BATON_COMPILE=1`` compiles or fails (never falls back);
``BATON_COMPILE=0`` builds pure Python. Every editable install is pure Python whatever the
variable says, so an edited ``.py`` is never shadowed by a stale ``.so``. Only the wheel build
itself compiles: the hooks that run ``setup.py`` for metadata or requirements see
``BATON_COMPILE=0``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (the hooks this backend does not change)
    build_sdist,
    get_requires_for_build_sdist,
)

#: the mypy (mypyc) a compiled build uses; a new minor version is tried before it is allowed
MYPY_REQUIREMENT = "mypy>=2.3,<2.5"
#: the variable asking for the compiled build
COMPILE_VARIABLE = "BATON_COMPILE"


def compile_setting() -> str:
    """What BATON_COMPILE asks for: "1" (compile or fail), "0" (pure Python) or "" (unset or
    empty: compile where a compiler is found); anything else is refused rather than
    guessed."""
    value = os.environ.get(COMPILE_VARIABLE, "").strip()
    if value not in ("", "0", "1"):
        raise SystemExit(f"{COMPILE_VARIABLE}={value!r}: use 1 (compile with mypyc) or 0")
    return value


def compiler_missing() -> str | None:
    """Why this machine cannot compile the C extensions (no compiler, no Python headers), or
    None when it can."""
    # distutils compiles with $CC when set, else the compiler Python was built with
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler: {compiler!r} is not on PATH (install gcc)"
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        return f"no Python headers: {include / 'Python.h'} is missing (install python3-dev)"
    return None


def compile_requested() -> bool:
    """Whether this build compiles: BATON_COMPILE=1, or unset where a compiler is found."""
    setting = compile_setting()
    return setting == "1" or (setting == "" and compiler_missing() is None)


@contextlib.contextmanager
def _pure() -> Iterator[None]:
    """setuptools' hook run with BATON_COMPILE=0 (setup.py then compiles nothing)."""
    saved = os.environ.get(COMPILE_VARIABLE)
    os.environ[COMPILE_VARIABLE] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(COMPILE_VARIABLE, None)
        else:
            os.environ[COMPILE_VARIABLE] = saved


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    """setuptools' requirements, and mypy when this build compiles."""
    extra = [MYPY_REQUIREMENT] if compile_requested() else []
    with _pure():
        return [*_setuptools.get_requires_for_build_wheel(config_settings), *extra]


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Any = None) -> str:
    """The wheel's metadata (the same, compiled or not)."""
    with _pure():
        return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(
    wheel_directory: str, config_settings: Any = None, metadata_directory: str | None = None
) -> str:
    """setuptools' wheel, compiled as :func:`compile_requested` says; a compile asked for by
    no one (BATON_COMPILE unset) that fails is built again in pure Python, said on stderr."""
    if not compile_requested():
        with _pure():
            return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    try:
        return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    except (Exception, SystemExit) as exc:  # setuptools ends a failed compile with SystemExit
        if compile_setting() == "1":  # asked for: the failure is the answer
            raise
        print(
            f"baton: the compiled build failed ({str(exc).strip()[:300] or type(exc).__name__}):"
            f" building pure Python instead (BATON_COMPILE=1 makes this an error,"
            f" BATON_COMPILE=0 skips compiling)",
            file=sys.stderr,
        )
        shutil.rmtree(Path("build") / "mypyc_src", ignore_errors=True)
        with _pure():
            return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    """An editable install is never compiled: no mypy."""
    with _pure():
        return _setuptools.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Any = None
) -> str:
    """The editable install's metadata."""
    with _pure():
        return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_editable(
    wheel_directory: str, config_settings: Any = None, metadata_directory: str | None = None
) -> str:
    """An editable install, pure Python whatever BATON_COMPILE says (a compiled module next to
    its source would be imported instead of the edited ``.py``)."""
    with _pure():
        return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
