"""Names and rooms: the SDK's public names, and no two classes of one name in the library."""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import pytest

import baton.streams.client
import baton.streams.sdk

pytestmark = pytest.mark.unit

LIBRARY = ("schemas", "processors", "streams", "sinks", "cli")


def test_the_sdk_exports_its_public_names_and_the_docs_path_re_exports_them() -> None:
    sdk, docs_path = baton.streams.sdk, baton.streams.client
    assert sorted(sdk.__all__) == sorted(docs_path.__all__)
    for name in sdk.__all__:
        assert getattr(docs_path, name) is getattr(sdk, name), name
    assert {"GovernanceClient", "AsyncGovernanceClient", "ApproverClient", "OperatorClient"} <= set(
        sdk.__all__
    )


def test_no_two_classes_of_the_library_share_a_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for package in LIBRARY:
        folder = Path(next(iter(importlib.import_module(f"baton.{package}").__path__)))
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    where[node.name].append(f"{package}/{path.relative_to(folder)}")
    shared = {name: files for name, files in where.items() if len(files) > 1}
    assert not shared, f"classes of one name (rename one of each): {shared}"
