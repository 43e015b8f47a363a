"""A launch across machines, tried on one computer: two "machines" of one process each meet on the loopback
address (gloo on CPU), once through the SLURM example's per-machine script (configs/slurm/launch_node.sh, which runs
`accelerate launch` with configs/accelerate/multi_node.yaml; only `srun` and `scontrol` are missing here, so the
test plays SLURM's part by setting its variables) and once through the documented torchrun command. Each launch
trains 2 steps of batch 2 on two processes. A wrapper around the entry script notes, on every rank, the rows it
trained on and the adapter it ended with, which the run itself never writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, dialogue, read_metrics, two_layer_model, write_jsonl
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

STEPS, BATCH = 2, 2
# the embedded model cut to two layers: what is tested here is what a run does, not what it learns
FLAGS = ["--model", two_layer_model(), "--max-steps", str(STEPS), "--batch-size", str(BATCH), "--grad-accum", "1",
         "--r", "8", "--dtype", "float32", "--learning-rate", "1e-3", "--eval-fraction", "0", "--max-seq-length", "128",
         "--save-steps", "0", "--samples", "0"]

# Runs the entry script unchanged, after wrapping two of its steps to note what this rank did.
WRAPPER = """\
import json, os, runpy, sys
sys.path.insert(0, {repo!r})
import trl
from peft import get_peft_model_state_dict
from safetensors.torch import save_file
from llama_lora.train import pipeline

notes, rank, seen = {notes!r}, os.environ["RANK"], []
train_step = trl.SFTTrainer.training_step
def noting_step(self, model, inputs, *args, **kwargs):
    for ids, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()):
        seen.append([token for token, keep in zip(ids, mask) if keep])
    return train_step(self, model, inputs, *args, **kwargs)
trl.SFTTrainer.training_step = noting_step
save_adapter = pipeline._save_adapter
def noting_save(trainer, model, staging, is_main):
    save_adapter(trainer, model, staging, is_main)
    weights = {{name: tensor.detach().contiguous() for name, tensor in get_peft_model_state_dict(model).items()}}
    save_file(weights, f"{{notes}}/adapter-rank{{rank}}.safetensors")
    with open(f"{{notes}}/rows-rank{{rank}}.json", "w") as file:
        json.dump(seen, file)
pipeline._save_adapter = noting_save
runpy.run_path({script!r}, run_name="__main__")
"""


def free_port() -> int:
    """A loopback port nobody listens on now (other test runs may launch at the same time)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory, smollm2_path) -> Path:
    root = tmp_path_factory.mktemp("multi-node")
    return write_jsonl(root / "data.jsonl", [dialogue(f"What is {a} times 3?", f"1. {a} + {a} = {2 * a}.\n"
                                                      f"2. {2 * a} + {a} = {3 * a}.") for a in range(2, 26)])


def wrapper(folder: Path) -> Path:
    folder.mkdir(parents=True)
    path = folder / "noting_wrapper.py"
    path.write_text(WRAPPER.format(repo=str(REPO), notes=str(folder), script=str(REPO / "lora_peft_finetuning.py")))
    return path


def launch_two_machines(commands: list[list[str]], envs: list[dict[str, str]]) -> list[subprocess.CompletedProcess]:
    """Start each machine's launcher at once (they wait for each other at the rendezvous), then wait for both."""
    processes = [subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                          "PYTHONUNBUFFERED": "1", **env},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command, env in zip(commands, envs)]
    results = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    for result in results:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return results


def check_one_run_trained_on_disjoint_shards(out: Path, notes: Path, machines: list[subprocess.CompletedProcess]):
    """What every launch across machines must give: rank 0 alone writes the run folder, each rank trains on its own
    rows, and every rank ends with the same adapter, the one saved."""
    assert read_metrics(out)["processes"] == {"count": 2, "fsdp": False}
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    assert [m.stdout.count("Saved adapter and run record") for m in machines] == [1, 0]
    rows = [[tuple(row) for row in json.loads((notes / f"rows-rank{rank}.json").read_text())] for rank in (0, 1)]
    assert [len(r) for r in rows] == [STEPS * BATCH, STEPS * BATCH]
    assert set(rows[0]).isdisjoint(rows[1])  # a shard each: no row trained twice in a step
    adapters = [load_file(notes / f"adapter-rank{rank}.safetensors") for rank in (0, 1)]
    saved = load_file(out / "adapter_model.safetensors")
    assert adapters[0].keys() == adapters[1].keys() == saved.keys()
    assert any(adapters[0][name].abs().max() > 0 for name in saved if "lora_B" in name)  # it trained (B starts at 0)
    for name in saved:
        assert torch.equal(adapters[0][name], adapters[1][name]), name  # DDP kept the copies identical
        assert torch.equal(adapters[0][name], saved[name]), name


def test_two_machines_through_the_slurm_example_train_one_adapter_on_disjoint_shards_with_one_cache_build(
        data, tmp_path):
    out, notes, cache = tmp_path / "run", tmp_path / "notes", tmp_path / "cache"
    script = wrapper(notes)
    # what multi_node.sbatch and srun give each machine's launch_node.sh
    job = {"SLURM_NNODES": "2", "GPUS_PER_NODE": "1", "MAIN_PROCESS_IP": "127.0.0.1",
           "MAIN_PROCESS_PORT": str(free_port()), "TRAIN_SCRIPT": str(script), "PYTHON": sys.executable}
    command = ["bash", "configs/slurm/launch_node.sh", "--dataset", str(data), "--output-dir", str(out), *FLAGS,
               "--data-cache", str(cache)]
    machines = launch_two_machines([command, command], [{**job, "SLURM_NODEID": "0"}, {**job, "SLURM_NODEID": "1"}])
    check_one_run_trained_on_disjoint_shards(out, notes, machines)
    # machine 0 tokenizes the data once; machine 1 reads that cache entry
    entry = read_metrics(out)["data"]["cache"]["path"]
    assert f"[process 0 of 2] tokenized data built into {entry}" in machines[0].stdout
    assert f"[process 1 of 2] tokenized data memory-mapped from {entry}" in machines[1].stdout
    assert "tokenized data built into" not in machines[1].stdout
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [Path(entry).name]


def test_two_machines_through_torchrun_train_one_adapter_on_disjoint_shards(data, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")  # installed with torch, beside this Python
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    out, notes = tmp_path / "run", tmp_path / "notes"
    script = wrapper(notes)
    port = free_port()
    commands = [[str(torchrun), "--nnodes", "2", "--node_rank", str(rank),
                 "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                 "--", str(script),  # without it torchrun takes --r for an abbreviation of its own options
                 "--dataset", str(data), "--output-dir", str(out), *FLAGS] for rank in (0, 1)]
    machines = launch_two_machines(commands, [{}, {}])
    check_one_run_trained_on_disjoint_shards(out, notes, machines)
