"""Each extension point is declared once: adding an entry is one declaration (plus its own code), and every
place that lists entries reads the declaration. Each test adds an entry and sees it everywhere it should."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import REPO, load_script
from llama_lora import backend
from llama_lora.backend import BACKENDS, BackendSpec
from llama_lora.options.config import ConfigError, Machine, TrainConfig, resolve
from llama_lora.run import files

CPU = Machine(cuda=False)


def test_every_declared_backend_has_its_entry_script_and_it_builds_from_the_declaration():
    for name, spec in BACKENDS.items():
        assert (REPO / spec.script).is_file()
        script = load_script(spec.script)  # importing an entry script loads no backend library
        assert script.BACKEND.spec is spec and script.BACKEND.name == name


@pytest.fixture
def third_backend(monkeypatch) -> BackendSpec:
    spec = BackendSpec("third", "Third", "lora_third_finetuning.py", libraries=("third_lib",), cpu_batching=("padded",),
                       cpu_batching_limit="its CPU kernels see across example boundaries")
    monkeypatch.setattr(backend, "BACKENDS", {**BACKENDS, "third": spec})
    return spec


def test_a_declared_backend_is_trained_by_the_comparison(third_backend, tmp_path: Path):
    commands = load_script("compare_backends.py").training_commands(tmp_path, ("--max-steps", "2"))
    assert list(commands) == [*BACKENDS, "third"]
    assert commands["third"][1:] == [str(REPO / "lora_third_finetuning.py"), "--max-steps", "2",
                                     "--output-dir", str(tmp_path / "third")]


def test_a_backends_cpu_batching_capability_decides_the_refusal(third_backend):
    with pytest.raises(ConfigError, match=r"--batching packed needs a CUDA GPU with the Third backend: its CPU "
                                          r"kernels see .*the PEFT backend \(lora_peft_finetuning.py --batching packed"):
        resolve(TrainConfig(batching="packed"), "third", CPU)
    assert resolve(TrainConfig(batching="packed"), "peft", CPU).batching == "packed"
    assert resolve(TrainConfig(batching="padded"), "third", CPU).batching == "padded"


def test_the_run_folder_files_are_named_once_and_each_name_is_unique():
    names = [value for key, value in vars(files).items() if key.isupper() and isinstance(value, str)]
    assert len(names) == len(set(names))
    assert set(files.COMPLETED) <= set(names)
    # no module joins a path with a declared file name spelled out: they all go through llama_lora/run/files.py
    spelled = [f"{path.relative_to(REPO)}: {name}" for path in sorted((REPO / "llama_lora").rglob("*.py"))
               for name in names if re.search(rf"/\s*[\"']{re.escape(name)}[\"']", path.read_text())]
    assert spelled == []
