"""The shared package and the PEFT side never import Unsloth: `import unsloth` patches transformers, TRL and PEFT,
so a shared module that imported it would make the "plain PEFT" baseline Unsloth-patched without a trace."""

from __future__ import annotations

import ast
import subprocess
import sys

from helpers import REPO

SHARED = sorted((REPO / "llama_lora").rglob("*.py"))
# the scripts that run without Unsloth (use_adapter.py check --unsloth runs scripts/unsloth_logits.py in its own process)
PLAIN_SCRIPTS = [REPO / name for name in ("lora_peft_finetuning.py", "compare_backends.py", "use_adapter.py")]


def unsloth_imports(path) -> list[str]:
    """Every import of unsloth or unsloth_zoo in a file, at any depth (a function's lazy import too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [f"{path.name}:{node.lineno}: {name}" for name in names
                  if name.split(".")[0] in ("unsloth", "unsloth_zoo")]
    return found


def test_no_shared_module_or_plain_script_has_an_unsloth_import_anywhere_in_it():
    assert len(SHARED) > 20  # the glob found the package
    assert [hit for path in SHARED + PLAIN_SCRIPTS for hit in unsloth_imports(path)] == []


def test_importing_every_shared_module_leaves_unsloth_out_of_sys_modules():
    # A fresh interpreter, so nothing another test imported counts; the PEFT entry script is loaded too.
    code = (
        "import importlib, importlib.util, pkgutil, sys\n"
        "import llama_lora\n"
        "names = [m.name for m in pkgutil.walk_packages(llama_lora.__path__, 'llama_lora.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "spec = importlib.util.spec_from_file_location('peft_script', 'lora_peft_finetuning.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(len(names), sorted(m for m in sys.modules if m.split('.')[0] in ('unsloth', 'unsloth_zoo')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    # every module file was imported (the package's own __init__ excluded; a subpackage counts as its __init__),
    # and not one unsloth module came with them
    assert result.stdout.strip().splitlines()[-1] == f"{len(SHARED) - 1} []"
