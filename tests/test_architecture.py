"""Standing rules of the code's shape (the README's Development section, docs/contributing.md).

- no module under src/synthseg over 550 lines, no package folder with more than 15 modules directly inside;
- imports run down the layers only, and no module imports itself back through others (no import circles);
- every command's module is named after the command;
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
MAX_MODULES = 15
# From the ground up; a module imports from its own layer or those below it. (Top-level modules by name,
# packages by their folder.)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "paths", "settings", "utils", "progressive"),
    ("data",),
    ("networks", "losses", "checkpoint"),
    ("metrics",),
    ("synth",),
    ("models",),
    ("report",),
    ("train", "train_checks", "demo", "demo_sweep", "demo_record", "cli", "__main__"),
)


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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__main__"
    ranks = [i for i, names in enumerate(LAYERS) if top in names]
    assert ranks, f"{module}: not in any layer of test_architecture.LAYERS"
    return ranks[0]


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in it: function-level imports count too)."""
    return {
        _module_name(path): {n for n in _imports(path) if n.startswith("synthseg.")} for path in _modules()
    }


def test_imports_run_down_the_layers() -> None:
    upward = sorted(
        f"{module} -> {name}"
        for module, names in _graph().items()
        for name in names
        if _layer(name) > _layer(module)
    )
    assert not upward, upward


def test_no_import_circles() -> None:
    graph = _graph()
    circles: list[str] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for name in sorted(graph.get(module, ())):
            if name not in graph:
                continue
            if state.get(name) == 1:
                circles.append(" -> ".join([*stack[stack.index(name) :], name]))
            elif name not in state:
                visit(name)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not circles, circles


def test_package_folders_stay_readable() -> None:
    crowded = {
        str(folder.relative_to(PACKAGE)): n
        for folder in [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__")]
        if (n := len([p for p in folder.glob("*.py") if p.name != "__init__.py"])) > MAX_MODULES
    }
    assert not crowded, f"package folders with more than {MAX_MODULES} modules: {crowded}"


def test_command_modules_are_named_after_their_command() -> None:
    from synthseg.cli import COMMANDS

    misnamed = {
        command: target
        for command, (_, target) in COMMANDS.items()
        if target.partition(":")[0].rsplit(".", 1)[-1] != command.replace("-", "_")
        or target.partition(":")[2] != "main"
    }
    assert not misnamed, misnamed


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
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


@pytest.mark.slow
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


def test_user_cache_dir_follows_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthseg.paths import user_cache_dir

    monkeypatch.setenv("SYNTHSEG_CACHE_DIR", str(tmp_path / "cache"))
    assert user_cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()
    monkeypatch.delenv("SYNTHSEG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "synthseg"
