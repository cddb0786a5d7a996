"""The compiled build's supports, checked in the pure-Python build (and again against the
compiled one by tests/integration/test_compiled_core.py): ``Decision``'s interpreted twin is
the same record, a decision reads and writes the same through either, the build backend
refuses a BATON_COMPILE it does not know and compiles a wheel where it can unless told not to,
and what says whether the core is compiled."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from baton.processors import compiled
from baton.schemas import decision, decision_doc
from baton.schemas.decision import DECISION_ADAPTER, DECISION_FIELDS, Decision, Outcome, Phase

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _fields(path: Path, name: str) -> list[tuple[str, str, str | None]]:
    """(name, annotation, default) of each field of the class ``name`` in ``path``'s source
    (read from the ``.py``: a compiled class keeps none of it)."""
    tree = ast.parse(path.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    return [
        (
            stmt.target.id,
            ast.unparse(stmt.annotation),
            None if stmt.value is None else ast.unparse(stmt.value),
        )
        for stmt in cls.body
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
    ]


def test_the_twin_declares_every_field_as_decision_does() -> None:
    record = _fields(REPO / "schemas" / "decision.py", "Decision")
    twin = _fields(REPO / "schemas" / "decision_doc.py", "DecisionDoc")
    assert twin == record
    assert tuple(name for name, _, _ in record) == DECISION_FIELDS


def test_a_decision_reads_back_the_same_through_the_twin() -> None:
    d = Decision(
        "id",
        "r1",
        "run",
        "default",
        Phase.PRE_HANDOFF,
        Outcome.STOP,
        "handoff_budget_exceeded",
        spent_usd=1.25,
        reserved_usd=3.0,
        decided_at=datetime(2026, 11, 30, 16, 0, tzinfo=UTC),
        detail="x\u2028y",
    )
    raw = d.to_json()
    # the bytes are orjson's of the dataclass, field by field (a compiled Decision writes them
    # through a dict: orjson cannot read a native class)
    values = {name: getattr(d, name) for name in DECISION_FIELDS}
    assert raw == orjson.dumps(values)
    for back in (
        DECISION_ADAPTER.validate_json(raw),
        decision_doc.TWIN_ADAPTER.validate_json(raw),
        DECISION_ADAPTER.validate_python(orjson.loads(raw)),
    ):
        assert type(back) is Decision
        assert back == Decision.from_json(raw)
        assert back.to_json() == raw
    with pytest.raises(ValueError):
        DECISION_ADAPTER.validate_json(raw.replace(b'"outcome":"stop"', b'"outcome":"maybe"'))
    # an int for a float field: kept as given by the interpreted class, made a float by the
    # compiled one (its JSON then says 3.0 for 3): equal either way, and pydantic reads floats
    given = Decision("i", "r", "run", "t", Phase.CONTROL, Outcome.RECORDED, "ok", spent_usd=3)
    assert given.spent_usd == 3 and DECISION_ADAPTER.validate_json(given.to_json()).spent_usd == 3


def test_the_twin_gives_decisions_schema_hints_and_defaults() -> None:
    assert decision_doc.TWIN_ADAPTER.json_schema() == DECISION_ADAPTER.json_schema()
    hints = decision_doc.decision_hints()
    assert list(hints) == list(DECISION_FIELDS)
    assert hints["fallback"] == decision.Fallback | None
    assert decision_doc.decision_defaults()["reemitted"] is False


def test_a_bad_baton_compile_is_refused_and_editable_installs_never_compile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = importlib.util.spec_from_file_location(
        "baton_build_under_test", REPO / "build_backend" / "baton_build.py"
    )
    assert spec is not None and spec.loader is not None
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    seen: list[str | None] = []

    class _Setuptools:  # what setuptools' hooks see of BATON_COMPILE
        @staticmethod
        def get_requires_for_build_wheel(config_settings: object = None) -> list[str]:
            seen.append(os.environ.get("BATON_COMPILE"))
            return ["wheel"]

        get_requires_for_build_editable = get_requires_for_build_wheel

        @staticmethod
        def build_editable(*args: object) -> str:
            seen.append(os.environ.get("BATON_COMPILE"))
            return "baton.whl"

    monkeypatch.setattr(backend, "_setuptools", _Setuptools)
    monkeypatch.setenv("BATON_COMPILE", "yes")
    with pytest.raises(SystemExit, match="use 1"):
        backend.compile_requested()
    monkeypatch.setenv("BATON_COMPILE", "1")
    assert backend.compile_requested()
    assert any(r.startswith("mypy") for r in backend.get_requires_for_build_wheel())
    assert not any(r.startswith("mypy") for r in backend.get_requires_for_build_editable())
    assert backend.build_editable("dist") == "baton.whl"
    assert seen == ["0", "0", "0"]  # setup.py never compiles for them
    assert os.environ["BATON_COMPILE"] == "1"  # given back
    monkeypatch.setenv("BATON_COMPILE", "0")
    assert backend.get_requires_for_build_wheel() == ["wheel"]


def _backend() -> object:
    spec = importlib.util.spec_from_file_location(
        "baton_build_under_test", REPO / "build_backend" / "baton_build.py"
    )
    assert spec is not None and spec.loader is not None
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    return backend


@pytest.mark.parametrize("missing", [None, "no C compiler: 'gcc' is not on PATH (install gcc)"])
def test_a_wheel_compiles_by_default_where_a_compiler_is_found(
    monkeypatch: pytest.MonkeyPatch, missing: str | None
) -> None:
    backend: Any = _backend()
    seen: list[str | None] = []

    class _Setuptools:
        @staticmethod
        def get_requires_for_build_wheel(config_settings: object = None) -> list[str]:
            return ["wheel"]

        @staticmethod
        def build_wheel(*args: object) -> str:
            seen.append(os.environ.get("BATON_COMPILE"))
            return "baton.whl"

    monkeypatch.setattr(backend, "_setuptools", _Setuptools)
    monkeypatch.setattr(backend, "compiler_missing", lambda: missing)
    monkeypatch.delenv("BATON_COMPILE", raising=False)
    mypy = any(r.startswith("mypy") for r in backend.get_requires_for_build_wheel())
    assert backend.build_wheel("dist") == "baton.whl"
    if missing is None:  # compiled: setup.py sees no BATON_COMPILE and compiles
        assert mypy and seen == [None] and backend.compile_requested()
    else:  # pure, and said as pure to setup.py
        assert not mypy and seen == ["0"] and not backend.compile_requested()
    assert "BATON_COMPILE" not in os.environ
    monkeypatch.setenv("BATON_COMPILE", "0")  # told not to: pure even with a compiler
    monkeypatch.setattr(backend, "compiler_missing", lambda: None)
    assert backend.get_requires_for_build_wheel() == ["wheel"]
    assert not backend.compile_requested()


@pytest.mark.parametrize("setting", ["", "1"])
def test_a_failed_compile_falls_back_to_pure_python_only_when_no_one_asked_for_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], setting: str
) -> None:
    backend: Any = _backend()
    seen: list[str | None] = []

    class _Setuptools:
        @staticmethod
        def build_wheel(*args: object) -> str:
            seen.append(os.environ.get("BATON_COMPILE"))
            if os.environ.get("BATON_COMPILE") != "0":
                raise SystemExit("error: command 'gcc' failed with exit code 1")
            return "baton-pure.whl"

    monkeypatch.setattr(backend, "_setuptools", _Setuptools)
    monkeypatch.setattr(backend, "compiler_missing", lambda: None)
    monkeypatch.setenv("BATON_COMPILE", setting)
    if setting == "1":  # asked for: the failure is the answer
        with pytest.raises(SystemExit, match="gcc"):
            backend.build_wheel("dist")
        assert seen == ["1"]
        return
    assert backend.build_wheel("dist") == "baton-pure.whl"
    assert seen == ["", "0"]
    err = capsys.readouterr().err
    assert "the compiled build failed (error: command 'gcc' failed" in err
    assert "building pure Python instead" in err
    assert os.environ["BATON_COMPILE"] == ""  # given back


def test_compiled_modules_names_the_extensions_python_would_import(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from baton import processors

    fake = tmp_path / "processors"
    fake.mkdir()
    (fake / f"engine{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    (fake / "engine.py").write_text("")
    before = compiled.compiled_modules()
    monkeypatch.setattr(processors, "__path__", [*processors.__path__, str(fake)])
    assert set(compiled.compiled_modules()) - set(before) <= {"baton.processors.engine"}
    assert "baton.processors.engine" in compiled.compiled_modules()
    assert compiled.core_build() == "compiled"


def test_the_build_in_this_process_is_said_as_it_is() -> None:
    engine = sys.modules.get("baton.processors.engine") or importlib.import_module(
        "baton.processors.engine"
    )
    native = not (engine.__file__ or "").endswith(".py")
    assert compiled.core_build() == ("compiled" if native else "interpreted")
    assert (not (decision.__file__ or "").endswith(".py")) == decision_doc.COMPILED


def _empty_container(value: ast.expr | None) -> bool:
    if isinstance(value, ast.Dict | ast.List):
        return not (value.keys if isinstance(value, ast.Dict) else value.elts)
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id in ("dict", "list", "set")
        and not value.args
    )


def _unsound_nones(source: str) -> list[str]:
    """Variables set to a bare None and elsewhere in the function to an empty container,
    without an annotation: mypy then types the variable as the container after a loop or an
    if that may not have set it (session 9: chain_content's ``later``, which mypyc compiled
    as a dict's size read of None), and mypyc compiles what mypy says."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        annotated, nones, containers = set(), {}, set()
        for node in ast.walk(fn):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                annotated.add(node.target.id)
            if not isinstance(node, ast.Assign):
                continue
            for target in node.targets:
                if isinstance(target, ast.Name):
                    pairs = [(target, node.value)]
                elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs = list(zip(target.elts, node.value.elts, strict=False))
                else:
                    continue
                for name, value in pairs:
                    if not isinstance(name, ast.Name):
                        continue
                    if isinstance(value, ast.Constant) and value.value is None:
                        nones.setdefault(name.id, node.lineno)
                    elif _empty_container(value):
                        containers.add(name.id)
        found += [
            f"{fn.name}:{line} {name}"
            for name, line in nones.items()
            if name in containers - annotated
        ]
    return found


def test_no_compiled_module_leaves_mypy_a_none_it_narrows_unsoundly() -> None:
    listed = (REPO / "build_backend" / "compiled_modules.txt").read_text().splitlines()
    modules = [line.strip() for line in listed if line.strip() and not line.startswith("#")]
    assert len(modules) >= 20
    found = {m: _unsound_nones((REPO / m).read_text()) for m in modules}
    assert not {m: f for m, f in found.items() if f}, found
    # the scan sees the pattern it is for
    bad = "def f(xs):\n    later = None\n    for x in xs:\n        if later is None:\n"
    assert _unsound_nones(bad + "            later = {}\n    return later\n") == ["f:2 later"]


@pytest.mark.parametrize("key", ["t0", "t", "ev"])
def test_a_records_time_that_is_a_bool_is_unreadable_in_either_build(key: str) -> None:
    # a compiled RunState holds 1.0 for True (mypyc converts a bool given for a float), so
    # the check reads the record's own values: the interpreted build refused it, and so must
    # the compiled one (a forged record is never decided on)
    from baton.processors.state import RunState

    wire = orjson.loads(RunState.new("run-x", "default", 1772355600.0).to_bytes())
    with pytest.raises(ValueError, match="expected a number of seconds"):
        RunState.from_bytes(orjson.dumps({**wire, key: True}))
    assert RunState.from_bytes(orjson.dumps({**wire, key: 1772355601})).run_id == "run-x"
