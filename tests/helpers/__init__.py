"""Helpers the tests share: the repository path, loading a script as a module, reading a run folder's record,
waiting on a running training process, running one with markers of its phases, running the training CLI without
training, writing tiny datasets, and making a run folder without training."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The machine's own GPU setting, read before the test session hides every GPU (hide_gpus_and_hub).
MACHINE_CUDA_VISIBLE_DEVICES = os.environ.get("CUDA_VISIBLE_DEVICES")


def hide_gpus_and_hub() -> None:
    """Make this process, and every subprocess that inherits its environment, see no GPU and no model hub.

    The tests exercise the CPU path, the embedded model, whatever the machine: on a CUDA machine the entry scripts'
    default is the gated Llama 3.1 8B in 4-bit, which a contributor may not have access to and which would change
    what the tests assert. Must run before torch initialises CUDA (conftest does it at import)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["HF_HUB_OFFLINE"] = "1"


def gpu_environment() -> dict[str, str]:
    """The environment for a subprocess of a `gpu`-marked test: the session's, with the machine's GPUs visible."""
    env = dict(os.environ)
    if MACHINE_CUDA_VISIBLE_DEVICES is None:
        env.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        env["CUDA_VISIBLE_DEVICES"] = MACHINE_CUDA_VISIBLE_DEVICES
    return env


def machine_has_gpu() -> bool:
    """True when the machine has an NVIDIA GPU the `gpu` tests can use (asked of nvidia-smi, not of torch, which
    this process must not initialise on the GPU)."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    return bool(smi) and MACHINE_CUDA_VISIBLE_DEVICES != "" and subprocess.run(
        [smi, "-L"], capture_output=True, check=False).returncode == 0


TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
# The environment variable naming the two-layer copy of the embedded model that conftest cuts for the session.
TWO_LAYER_MODEL = "LLAMA_LORA_TEST_TWO_LAYER_MODEL"


def cut_layers(source: Path, folder: Path, layers: int) -> Path:
    """A copy of the model folder `source` with only its first `layers` decoder layers: real weights, tokenizer
    and architecture, a fraction of the compute. For tests of what a run does (files, signals, resume, processes),
    not of what it learns."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((source / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (folder / "config.json").write_text(json.dumps(config))
    with safe_open(source / "model.safetensors", "pt") as weights:  # reads only the tensors kept
        kept = {k: weights.get_tensor(k) for k in weights.keys()
                if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder


def two_layer_model() -> str:
    """The path of the session's two-layer copy of the embedded model (cut once by conftest, before the workers)."""
    return os.environ[TWO_LAYER_MODEL]


def load_script(relative: str):
    """Import a top-level script (an entry point or benchmark) as a module, the way its tests need it."""
    import importlib.util
    import sys

    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def read_metrics(folder: Path) -> dict:
    """A run folder's metrics.json, read through the typed run record (current key names, validated)."""
    from llama_lora.run import run_record

    record = run_record.read(folder)
    assert record is not None, f"{folder} has no metrics.json"
    return record.dump()


def wait_for_logged_steps(process, staging: Path, steps: int = 1, timeout: float = 600) -> None:
    """Wait until a running training process has logged `steps` steps in its staging folder's train_log.jsonl
    (fails if the process ends first or the timeout passes)."""
    import time

    log = staging / "train_log.jsonl"
    deadline = time.time() + timeout
    while len(log.read_text().splitlines() if log.exists() else []) < steps:
        assert process.poll() is None, "the run ended before it logged enough steps to be signalled"
        assert time.time() < deadline
        time.sleep(0.2)


def another_value(value):
    """Another value of the same kind: what a run that set this option differently would record."""
    if isinstance(value, bool) or value is None:
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, (list, tuple)):
        return [*value, "other"]
    return f"{value}-other"


def recording_cli(seen: list):
    """The real training CLI of the PEFT backend, with a runner that appends (config, run options) to `seen` and
    exits 0 instead of training."""
    from llama_lora.backend import BACKENDS, Backend
    from llama_lora.train.cli import build_cli

    return build_cli(Backend(BACKENDS["peft"], load=lambda cfg, path, trust_remote_code: None),
                     train=lambda cfg, backend, options: seen.append((cfg, options)) or 0)


def capture_cli(*args: str) -> tuple[int, object, str]:
    """Run the real training CLI without training: (exit status, the TrainConfig it would train, or None,
    everything it printed)."""
    from click.testing import CliRunner

    seen: list = []
    result = CliRunner().invoke(recording_cli(seen), list(args))
    return result.exit_code, (seen[0][0] if seen else None), result.output


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def dialogue(question: str, answer: str) -> dict:
    return {"messages": [{"role": "student", "content": question}, {"role": "teacher", "content": answer}]}


def make_run(folder: Path, base_path: str, seed: int, r: int = 8, dataset: str | None = None, **lora: object) -> Path:
    """A run folder as a training script leaves it (adapter, tokenizer, config.yaml, metrics.json), with a random
    (untrained) adapter on `base_path`; `dataset` replaces the recorded default (the bundled data)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_lora.options.config import Machine, TrainConfig, resolve, save_yaml
    from llama_lora.run import owned

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False, **lora)
    folder.mkdir(parents=True)
    owned.stamp(folder, owned.RUN)
    get_peft_model(base, config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(folder)
    cfg = resolve(TrainConfig(model="smollm2", r=r, dtype="float32", **({"dataset": dataset} if dataset else {})),
                  "peft", Machine(cuda=False))
    save_yaml(cfg, folder / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps({"status": "completed", "backend": "peft", "model": {
        "name": "smollm2", "path": base_path}, "load_in_4bit": False, "dtype": "float32"}))
    return folder


PHASE_MARKS = """
import os, runpy, sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))  # the repository, for llama_lora
import trl

from llama_lora.train import samples

marks = Path(__file__).parent  # this wrapper is written into the marks folder


def marking(owner, name, mark):
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        (marks / f"{mark}-{len(list(marks.glob(mark + '-*')))}").touch()
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


marking(trl.SFTTrainer, "training_step", "step")
marking(trl.SFTTrainer, "evaluate", "evaluate")
marking(samples, "before_and_after", "samples")
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def phase_marking(marks: Path) -> list[str]:
    """The command prefix that runs the entry script named next (the PEFT one: Unsloth must be imported
    first) unchanged, except that every training step, evaluation and the sample answers first touch a marker file
    in `marks` (step-0 as the first step begins, step-1, ...; evaluate-0 before training, evaluate-1 at the first
    evaluation during training, ...; samples-0), so a test can signal a real run in a known phase."""
    marks.mkdir(parents=True, exist_ok=True)
    wrapper = marks / "phase_marks.py"
    wrapper.write_text(PHASE_MARKS)
    return [sys.executable, str(wrapper)]


def wait_for_file(process, path: Path, timeout: float = 600) -> None:
    """Wait until `path` exists while `process` runs (fails if it ends first or the timeout passes)."""
    import time

    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared"
        assert time.time() < deadline
        time.sleep(0.02)


def fill_disk(folder: Path, leave_pages: int = 0) -> Path:
    """Fill the file system holding `folder` (a tmpfs) with one file, then free `leave_pages` 4 KiB pages of it:
    the next writes that need more fail with ENOSPC. Returns the filler (delete it to free the disk)."""
    import os

    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(1 << 16))
        except OSError:
            pass
        try:
            while True:
                f.write(bytes(4096))
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - 4096 * leave_pages))
    return filler
