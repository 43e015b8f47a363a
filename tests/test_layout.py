"""The package's folders form layers: a module imports only from its own folder, the folders below it, and the
root modules every stage shares (the order is llama_lora/__init__.py's). Imports that only serve type checkers
(`if TYPE_CHECKING:`) do not run and do not count."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "llama_lora"
# lowest first: each folder may import from those before it, never from those after it
LAYERS = ("options", "run", "model", "data", "use", "export", "train")
ROOT_MODULES = ("backend", "errors", "quiet", "distributed", "atomic_files")


def folder_of(module: str) -> str:
    """The stage folder of a dotted `llama_lora.<folder>.<module>` name, or the root module's own name."""
    return module.split(".")[1]


def runtime_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every `llama_lora` import in a file that runs (type-checking-only blocks left out)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in block.body for node in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llama_lora"):
            targets = [node.module] if node.module != "llama_lora" else [f"llama_lora.{a.name}" for a in node.names]
            found += [(node.lineno, target) for target in targets]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("llama_lora.")]
    return found


def rank(folder: str) -> int:
    """Root modules share rank -1 (below every stage folder); stage folders rank by LAYERS."""
    return -1 if folder in ROOT_MODULES else LAYERS.index(folder)


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).with_suffix("").parts[0]
        if own == "__init__":
            continue
        for line, target in runtime_imports(path):
            if target == "llama_lora" or folder_of(target) == own:
                continue
            if rank(folder_of(target)) > rank(own) or (own in ROOT_MODULES and folder_of(target) not in ROOT_MODULES):
                problems.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    return problems


def test_every_folder_of_the_package_is_a_declared_layer_or_root_module():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert folders == set(LAYERS)
    assert modules == set(ROOT_MODULES)


def test_no_module_imports_from_a_folder_above_its_own():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path: Path, monkeypatch):
    # the same check on a copy of one module with an import of the training stage planted in it
    planted = tmp_path / "llama_lora" / "data"
    planted.mkdir(parents=True)
    (planted / "sources.py").write_text("from llama_lora.train.pipeline import train_adapter\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "llama_lora")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert upward_imports() == ["llama_lora/data/sources.py:1 imports llama_lora.train.pipeline"]


def folder_map(readme: str) -> list[str]:
    """The paths the README's folder map names under llama_lora/, from its indentation (two spaces a level)."""
    block = readme.split("## Folder map", 1)[1].split("```", 2)[1]
    paths, parents = [], []
    for line in block.splitlines():
        name = line.split()[0] if line.strip() else ""
        depth = (len(line) - len(line.lstrip())) // 2
        if not name or (depth == 0 and name != "llama_lora/"):
            continue
        parents[depth:] = [name]
        paths.append("".join(parents))
    return paths


def test_the_readme_folder_map_names_every_module_of_the_package_and_nothing_else():
    """Every module of the package root and of each stage folder, and every folder (a folder inside a stage, such as
    data/formats/, stands for its modules), and nothing that does not exist."""
    named = set(folder_map((REPO / "README.md").read_text()))
    modules = {str(path.relative_to(REPO)) for path in (REPO / "llama_lora").rglob("*.py")
               if path.name not in ("__init__.py", "__main__.py") and len(path.relative_to(REPO).parts) <= 3}
    folders = {str(path.relative_to(REPO)) + "/" for path in (REPO / "llama_lora").rglob("*")
               if path.is_dir() and path.name != "__pycache__"}
    assert {path for path in named if path.endswith(".py")} == modules
    assert {path for path in named if path.endswith("/")} == folders | {"llama_lora/"}
