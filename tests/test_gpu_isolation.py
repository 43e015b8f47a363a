"""The suite tests the CPU path on any machine: no test, and no process a test starts, can see a GPU or reach the
hub, so on a CUDA machine nothing resolves to the gated Llama 3.1 8B default. Only `gpu`-marked tests get the GPU
back, and only in the subprocesses they start."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, gpu_environment, machine_has_gpu

# What an entry script's defaults resolve to in a process with the tests' environment.
RESOLVED_DEFAULTS = (
    "import json, torch\n"
    "from llama_lora.options.config import TrainConfig, detect_machine, resolve\n"
    "cfg = resolve(TrainConfig(), 'peft', detect_machine())\n"
    "print(json.dumps({'cuda': torch.cuda.is_available(), 'model': cfg.model, 'load_in_4bit': cfg.load_in_4bit}))\n"
)


def test_a_test_subprocess_sees_no_gpu_and_resolves_the_embedded_model_offline():
    result = subprocess.run([sys.executable, "-c", RESOLVED_DEFAULTS], cwd=REPO, capture_output=True, text=True,
                            timeout=300, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"cuda": False, "model": "smollm2",
                                                                 "load_in_4bit": False}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and os.environ["HF_HUB_OFFLINE"] == "1"


def test_gpu_tests_get_the_machines_gpu_setting_back():
    env = gpu_environment()
    assert env.get("CUDA_VISIBLE_DEVICES") != "" or not machine_has_gpu()
    assert env["HF_HUB_OFFLINE"] == "1"  # the GPU, never the hub


def environment_arguments(tree: ast.AST) -> list[ast.expr]:
    """Every `env=` argument of a call in a test file."""
    return [kw.value for node in ast.walk(tree) if isinstance(node, ast.Call) for kw in node.keywords
            if kw.arg == "env"]


def inherits_the_session(value: ast.expr, assigned: dict[str, ast.expr]) -> bool:
    """True when an env= value is the session's environment extended (`{**os.environ, ...}`), a name bound to one,
    or gpu_environment() (the session's, with the GPU back): never an environment built from nothing."""
    if isinstance(value, ast.Name) and value.id in assigned:
        return inherits_the_session(assigned[value.id], {})
    if isinstance(value, ast.Call):
        return getattr(value.func, "id", None) == "gpu_environment"
    return (isinstance(value, ast.Dict) and None in value.keys
            and ast.unparse(value.values[value.keys.index(None)]) == "os.environ")


@pytest.mark.parametrize("path", sorted((REPO / "tests").rglob("*.py")), ids=lambda p: p.name)
def test_every_test_subprocess_inherits_the_sessions_environment(path):
    tree = ast.parse(path.read_text())
    assigned = {node.targets[0].id: node.value for node in ast.walk(tree)
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    escaping = [ast.unparse(value) for value in environment_arguments(tree) if not inherits_the_session(value, assigned)]
    assert escaping == []


def test_the_environment_check_catches_a_fresh_environment():
    tree = ast.parse("subprocess.run(['x'], env={'PATH': '/usr/bin'})\nenv = dict(PATH='/bin')\nrun(env=env)\n")
    assigned = {n.targets[0].id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)}
    assert [inherits_the_session(v, assigned) for v in environment_arguments(tree)] == [False, False]
