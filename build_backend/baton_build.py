"""Baton's build backend: setuptools, plus mypyc on the replay path when BATON_COMPILE=1.

``BATON_COMPILE=1 pip install .`` (a wheel build) adds mypy to the build requirements and
``setup.py`` compiles the modules in ``build_backend/compiled_modules.txt``; without it, and
for every editable install whatever the variable says, the build is pure Python, so an edited
``.py`` is never shadowed by a stale ``.so``. Only the wheel build itself compiles: the hooks
that run ``setup.py`` for metadata or requirements see no BATON_COMPILE.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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


def compile_requested() -> bool:
    """Whether BATON_COMPILE asks for the compiled build ("1"); unset, "" or "0" do not;
    anything else is refused rather than guessed."""
    value = os.environ.get(COMPILE_VARIABLE, "").strip()
    if value not in ("", "0", "1"):
        raise SystemExit(f"{COMPILE_VARIABLE}={value!r}: use 1 (compile with mypyc) or 0")
    return value == "1"


@contextlib.contextmanager
def _pure() -> Iterator[None]:
    """setuptools' hook run with no BATON_COMPILE (setup.py then compiles nothing)."""
    saved = os.environ.pop(COMPILE_VARIABLE, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[COMPILE_VARIABLE] = saved


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    """setuptools' requirements, and mypy when the compiled build is asked for."""
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
    """setuptools' wheel; setup.py compiles when BATON_COMPILE=1."""
    compile_requested()
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
