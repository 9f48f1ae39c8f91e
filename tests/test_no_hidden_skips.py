"""The suite never turns a broken install of a required package into a skip.

``pytest.importorskip`` is for optional extras only (matplotlib and Pillow of ``[report]``);
on the project's own modules or a required dependency it would hide an ImportError.
"""

from __future__ import annotations

import ast
import re
from importlib.metadata import requires
from pathlib import Path

TESTS = Path(__file__).resolve().parent
IMPORT_NAMES = {"pyyaml": "yaml"}  # distribution name -> module name, where they differ


def _required() -> set[str]:
    """The project's own packages and the import names of its required (not extra) dependencies."""
    names = {"medresunet", "pipelines", "benchmarks", "tests"}
    for dep in requires("medresunet") or []:
        if "extra ==" in dep:
            continue
        name = re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower()
        names.add(IMPORT_NAMES.get(name, name))
    assert {"torch", "monai", "numpy"} <= names, names
    return names


def _skipped_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "importorskip" and node.args
                and isinstance(node.args[0], ast.Constant)):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def test_no_importorskip_of_required_modules():
    required = _required()
    bad = [f"{path.name}:{line} importorskip({module!r})"
           for path in sorted(TESTS.glob("*.py")) for line, module in _skipped_modules(path)
           if module.split(".")[0].lower() in required]
    assert not bad, bad
