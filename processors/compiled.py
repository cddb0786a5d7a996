"""Whether this install's replay core is compiled: a wheel build (``pip install .``, the
Docker image) compiles the replay path's modules with mypyc where it finds a C compiler
(build_backend/compiled_modules.txt, docs/replay.md; ``BATON_COMPILE=0``/``1`` say otherwise);
an editable install is pure Python. ``baton doctor`` and ``baton replay`` say which one runs.

What is reported is what Python imports: a module with a compiled extension next to it (its
``.so``) runs the extension, whatever its ``.py`` says, until it is rebuilt.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

__all__ = ["compiled_modules", "core_build"]

#: the subpackages that hold compiled modules in a compiled build
_PACKAGES = ("processors", "schemas", "sinks")


def compiled_modules() -> list[str]:
    """The ``baton`` modules of this install that are compiled extensions, sorted ([] for
    the pure-Python build)."""
    from baton import processors, schemas, sinks

    found: set[str] = set()
    for name, package in zip(_PACKAGES, (processors, schemas, sinks), strict=True):
        for folder in package.__path__:
            for path in Path(folder).iterdir():
                # the first suffix that fits: ".so" fits "x.cpython-311-….so" too
                suffix = next((s for s in EXTENSION_SUFFIXES if path.name.endswith(s)), None)
                if suffix is not None:
                    found.add(f"baton.{name}.{path.name[: -len(suffix)]}")
    return sorted(found)


def core_build() -> str:
    """``compiled`` or ``interpreted``: how the replay core runs in this install."""
    return "compiled" if compiled_modules() else "interpreted"
