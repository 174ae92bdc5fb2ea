"""Standing rules of the code's shape (docs/architecture in the README's Development section).

- no module under src/synthseg over 550 lines;
- networks/, synth/ and metrics/ import neither Lightning nor synthseg.models (they run without a trainer);
- utils/ imports nothing from synthseg.models or synthseg.data;
- the dataset format tag is spelled out in exactly one module (data/manifest.py owns the dataset folder).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "synthseg"
MAX_LINES = 550


def _modules(folder: str = "") -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute names; relative imports are not used in the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_is_longer_than_the_limit() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("folder", ["networks", "synth", "metrics"])
def test_trainer_free_layers_import_no_lightning_and_no_models(folder: str) -> None:
    forbidden = ("pytorch_lightning", "lightning", "lightning_fabric", "synthseg.models", "synthseg.train")
    found = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imports(path) if n.startswith(forbidden))
        for path in _modules(folder)
    }
    assert not {k: v for k, v in found.items() if v}


def test_utils_import_nothing_from_models_or_data() -> None:
    forbidden = ("synthseg.models", "synthseg.data")
    found = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imports(path) if n.startswith(forbidden))
        for path in _modules("utils")
    }
    assert not {k: v for k, v in found.items() if v}


def test_importing_synth_and_metrics_loads_no_lightning() -> None:
    """The static check above misses imports made by what they import; this one runs them."""
    names = [
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        for folder in ("synth", "metrics")
        for p in _modules(folder)
        if p.name != "__init__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('pytorch_lightning', 'synthseg.models')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_dataset_format_tag_lives_in_one_module() -> None:
    holders = [str(p.relative_to(PACKAGE)) for p in _modules() if "synthseg-dataset/" in p.read_text()]
    assert holders == ["data/manifest.py"]
