"""The run state's compiled modules read their module constants as ``Final`` names.

mypyc (``BATON_COMPILE=1``, build_backend/compiled_modules.txt) reads a ``Final`` module name
from a C static and any other global through the module's dict (``CPyDict_GetItem``, ~130
instructions a read): ``RunState.remember`` read twelve an event that way, the write's
``_appended`` thirteen. This test holds the rule in the source, for both builds alike: inside
a function, a name the module assigns at its top level is ``Final``, and a name imported from
an interpreted module (lz4's) is read through a ``Final`` alias of it (state_compact is
compiled with them since session 17: its functions are imported, and called natively).
"""

from __future__ import annotations

import ast

import pytest

from tests.commit_tree import REPO

#: the compiled state modules (all processors/state*.py listed for the compiled build)
_LISTED = (REPO / "build_backend" / "compiled_modules.txt").read_text().splitlines()
MODULES = sorted(
    line for line in _LISTED if line.startswith("processors/state") and line.endswith(".py")
)
#: the modules the compiled build leaves interpreted that the state modules import from
INTERPRETED = ("lz4", "lz4.block")


def _is_final(annotation: ast.expr) -> bool:
    node = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    return isinstance(node, ast.Name) and node.id == "Final"


def _globals_read_in_functions(tree: ast.Module) -> set[str]:
    """Names loaded inside a function that no enclosing function binds (a rough scope)."""
    read: set[str] = set()
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        local = {a.arg for a in (*func.args.args, *func.args.kwonlyargs, *func.args.posonlyargs)}
        local |= {a.arg for a in (func.args.vararg, func.args.kwarg) if a is not None}
        for node in ast.walk(func):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                local.add(node.id)
        for node in ast.walk(func):
            if (
                isinstance(node, ast.Name)
                and isinstance(node.ctx, ast.Load)
                and node.id not in local
            ):
                read.add(node.id)
    return read


def _compiled_source(module: str | None) -> str | None:
    """The source of a compiled state module by its import name, else None."""
    path = f"{(module or '').removeprefix('baton.').replace('.', '/')}.py"
    return (REPO / path).read_text() if path in MODULES else None


def _slow_names(source: str) -> set[str]:
    """Top-level names of ``source`` that a compiled build keeps in the module's dict:
    constants not ``Final``, names from an interpreted module, and names imported from a
    compiled state module where they are such a name (functions and classes are native)."""
    tree = ast.parse(source)
    slow: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (other := _compiled_source(node.module)):
            slow |= {a.asname or a.name for a in node.names if a.name in _slow_names(other)}
        elif isinstance(node, ast.Assign):
            slow |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if not _is_final(node.annotation):
                slow.add(node.target.id)
        elif isinstance(node, ast.ImportFrom) and node.module in INTERPRETED:
            slow |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            slow |= {
                (a.asname or a.name).split(".")[0] for a in node.names if a.name in INTERPRETED
            }
    return slow - {"__all__"}


def _dict_reads(source: str) -> set[str]:
    """Names a function of ``source`` reads that a compiled build would read through the
    module's dict (``_slow_names``)."""
    return _globals_read_in_functions(ast.parse(source)) & _slow_names(source)


@pytest.mark.parametrize("path", MODULES)
def test_a_compiled_state_module_reads_its_constants_as_final_names(path: str) -> None:
    assert _dict_reads((REPO / path).read_text()) == set(), path


def test_the_check_sees_a_plain_constant_and_an_interpreted_name() -> None:
    """The check itself flags what the state modules held before: a plain constant, an
    interpreted module's function, lz4 read as a module; a Final name and a local pass."""
    source = (
        "import lz4.block\nfrom lz4.block import decompress\n"
        "_LENGTH = 3\n_OK: Final = 4\n_ALSO: Final[int] = 5\n"
        "def f(x, _LOCAL=1):\n    y = _LENGTH + _OK + _ALSO + _LOCAL\n"
        "    return decompress(x), lz4.block.compress(y)\n"
    )
    assert _dict_reads(source) == {"_LENGTH", "decompress", "lz4"}
    # a name another compiled state module holds as a plain constant (state_types' bounds
    # before session 14) or re-exports from an interpreted one (state.EMPTY before)
    imports = "from baton.processors.state_types import SEEN_LIMIT, TaskNode, intern\n"
    use = "def f(k):\n    return SEEN_LIMIT, TaskNode, intern(k)\n"
    assert _dict_reads(imports + use) == set()  # Final there now; TaskNode is a class
    assert _slow_names("SEEN_LIMIT = 512\n") == {"SEEN_LIMIT"}
