"""Both backends, side by side, on the Llama-3.1-8B architecture: tokens/s, peak memory, MFU, loss parity.

    python benchmarks/train_throughput.py                      # GPU: configurations A-D on an 8B-shaped model
    python benchmarks/train_throughput.py --configs A,B        # a subset
    python benchmarks/train_throughput.py --cpu                # CPU smoke mode: embedded SmolLM2, short lengths

A model with the exact Llama-3.1-8B architecture (random weights, the real Llama 3 tokenizer with the
Llama 3.1 template; no hub) is built once and saved to --work, so both backends load the same checkpoint
through their normal loaders. Each backend and configuration trains in its own process through the
project's own entry scripts (the same path a user runs), on synthetic plain-text rows that are exactly
the sequence length long (no padding, so every row is as dense as a packed one). Results go to
benchmarks/results/<device>-<date>.json and .md together with the command.
"""

from __future__ import annotations

import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llama_lora.backend import BACKENDS
from llama_lora.run import files, run_record  # after the path insert; light: pydantic, no torch
from llama_lora.run.compare import relative_differences

SCRIPTS = {name: REPO / spec.script for name, spec in BACKENDS.items()}

# Llama 3.1 8B, from Meta's published config.json.
LLAMA31_8B = {
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
}

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (FLOP/s), by a name fragment of torch's device name.
PEAK_BF16_FLOPS = {"H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.0e12, "H100 NVL": 835.0e12, "H200": 989.4e12,
                   "A100": 312.0e12, "L40S": 362.05e12, "RTX 4090": 165.2e12}


@dataclass(frozen=True)
class Setup:
    """One configuration's fixed flags; `search` names the one found by trial (batch or length)."""

    name: str
    title: str
    flags: dict[str, Any]
    seq_len: int
    search: str | None = None
    steps: int = 10
    warmup: int = 3
    real_lengths: bool = False  # rows of chat-like varying length (real_length_rows) instead of full-length ones


def configs(cpu: bool) -> dict[str, Setup]:
    """The four configurations of the benchmark (CPU mode: same shapes of run, lengths scaled down)."""
    optim_8bit = "adamw_torch_fused" if cpu else "adamw_8bit"  # bitsandbytes 8-bit optimizers are GPU-only
    scale = 8 if cpu else 1
    steps, warmup = (4, 1) if cpu else (10, 3)
    qlora = {"load_in_4bit": True, "r": 32, "lora_alpha": 32, "gradient_checkpointing": True, "optim": optim_8bit}
    return {
        "A": Setup("A", "QLoRA nf4 r=32, seq 2048, batch 2 x 4, 8-bit AdamW, checkpointing (Unsloth's published setup)",
                   {**qlora, "batch_size": 2, "grad_accum": 4}, 2048 // scale, steps=steps, warmup=warmup),
        "B": Setup("B", "A in 16-bit LoRA, r=16",
                   {**qlora, "load_in_4bit": False, "r": 16, "lora_alpha": 16, "batch_size": 2, "grad_accum": 4},
                   2048 // scale, steps=steps, warmup=warmup),
        "C": Setup("C", "bf16 LoRA r=16, full 4096-token rows, no checkpointing, largest batch that fits",
                   {"load_in_4bit": False, "r": 16, "lora_alpha": 16, "gradient_checkpointing": False,
                    "optim": "adamw_torch_fused", "grad_accum": 1}, 4096 // scale, search="batch_size",
                   steps=steps, warmup=warmup),
        "D": Setup("D", "QLoRA r=32, batch 1: the longest sequence that completes a training step",
                   {**qlora, "batch_size": 1, "grad_accum": 1}, 0, search="max_seq_length", steps=1, warmup=0),
        **{f"R-{mode}": Setup(f"R-{mode}", f"QLoRA r=16 (CPU: 16-bit), batch 8 x 1, real-length rows (up to {2048 // scale} tokens), "
                                           f"--batching {mode}",
                              {**qlora, "r": 16, "lora_alpha": 16, "batch_size": 8, "grad_accum": 1,
                               "load_in_4bit": not cpu, "batching": mode}, 2048 // scale, steps=steps, warmup=warmup, real_lengths=True)
           for mode in ("padded", "padding-free", "packed")},
    }


# ---------------------------------------------------------------------------------------------- report logic

def per_step_tokens_per_second(log: list[dict[str, Any]]) -> list[float]:
    """Non-padding tokens/s of each optimizer step, from the cumulative counters in train_log.jsonl."""
    rates, tokens, elapsed = [], 0, 0.0
    for entry in log:
        dt = entry["elapsed_s"] - elapsed
        if dt > 0:
            rates.append((entry["tokens_seen"] - tokens) / dt)
        tokens, elapsed = entry["tokens_seen"], entry["elapsed_s"]
    return rates


def throughput(log: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Median tokens/s over the steps after warm-up, and how long warm-up took (compilation, autotuning)."""
    rates = per_step_tokens_per_second(log)
    measured = rates[warmup:] or rates
    return {
        "median_tokens_per_s": round(statistics.median(measured), 1) if measured else None,
        "steps_measured": len(measured),
        "warmup_steps": min(warmup, len(rates)),
        "warmup_s": round(log[warmup - 1]["elapsed_s"], 2) if warmup and len(log) >= warmup else 0.0,
    }


def mfu(tokens_per_s: float | None, matmul_params: int, peak_flops: float | None, recompute: bool) -> dict[str, Any]:
    """Model FLOPs utilization. LoRA leaves the base weights frozen, so a token costs 2N forward + 2N for the
    input gradients = 4N (N = matmul parameters); checkpointing recomputes the forward, 6N. Attention's
    quadratic FLOPs are left out, as in the published figures this is compared with."""
    if not tokens_per_s or not peak_flops:
        return {"mfu_4n": None, "mfu_with_recompute": None}
    basis = 4 * matmul_params
    return {"mfu_4n": round(tokens_per_s * basis / peak_flops, 4),
            "mfu_with_recompute": round(tokens_per_s * (basis + 2 * matmul_params * recompute) / peak_flops, 4)}


def loss_difference(a: list[float], b: list[float]) -> dict[str, Any]:
    """Mean and max relative difference of two per-step loss lists over their shared steps."""
    _, diffs = relative_differences(dict(enumerate(a, 1)), dict(enumerate(b, 1)))
    if not diffs:
        return {"steps": 0}
    return {"steps": len(diffs), "mean": round(sum(diffs) / len(diffs), 6), "max": round(max(diffs), 6)}


def parity(runs: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The loss difference of the two backends, only when both trained on the same batches (C's searched batch
    sizes may differ, and then the per-step losses are not comparable)."""
    if {"peft", "unsloth"} - runs.keys():
        return None
    a, b = runs["peft"], runs["unsloth"]
    if not a.get("losses") or (a.get("batch_size"), a.get("seq_len")) != (b.get("batch_size"), b.get("seq_len")):
        return None
    return loss_difference(a["losses"], b.get("losses", []))


def _peak(run: dict[str, Any]) -> str:
    """Peak GPU memory allocated, or on CPU the process's peak RSS, marked as such."""
    if run.get("peak_allocated_gb") is not None:
        return str(run["peak_allocated_gb"])
    return f"{run['peak_rss_gb']} (CPU RSS)" if run.get("peak_rss_gb") is not None else "-"


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


def to_markdown(result: dict[str, Any]) -> str:
    """The results table, the environment and the command."""
    env = result["environment"]
    commands = result.get("commands") or [result["command"]]
    lines = [f"# Training throughput: {env['device']}, {result['date']}", "",
             *[f"Command: `{command}`  " for command in commands], f"Model: {result['model']}  ",
             f"Environment: {', '.join(f'{k} {v}' for k, v in env['libraries'].items() if v)}"
             + (f", driver {env['driver']}" if env.get("driver") else ""), "",
             ("| config | backend | batch x length | tokens/s (median) | warm-up s | peak alloc GiB | peak reserved GiB "
              "| MFU 4N | MFU w/ recompute | max length | padding | status |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, config in sorted(result["configs"].items()):
        for backend, r in config["backends"].items():
            shape = f"{r['batch_size']} x {r['seq_len']}" if r.get("seq_len") else "-"
            lines.append(
                f"| {name} | {backend} | {shape} | {r.get('median_tokens_per_s') or '-'} | {r.get('warmup_s', '-')} | "
                f"{_peak(r)} | {r.get('peak_reserved_gb') or '-'} | {_pct(r.get('mfu_4n'))} | "
                f"{_pct(r.get('mfu_with_recompute'))} | {r.get('max_seq_length') or '-'} | {_pct(r.get('padding_share'))} | "
                f"{r['status']} |")
    lines.append("")
    for name, config in sorted(result["configs"].items()):
        lines.append(f"- **{name}**: {config['title']}. Loss difference Unsloth vs PEFT: {config['loss_difference']}")
        for backend, r in config["backends"].items():
            if r.get("trials"):
                searched = "seq_len" if "max_seq_length" in r else "batch_size"  # D searches the length
                tried = ", ".join(f"{t[searched]}: {_outcome(t)}" for t in r["trials"])
                lines.append(f"  - {backend}, {searched} search (one training step each): {tried}")
    lines += ["", *result.get("notes", [])]
    return "\n".join(lines) + "\n"


def _outcome(trial: dict[str, Any]) -> str:
    """How one search probe ended, with its peak memory when it completed."""
    if trial.get("stopped"):
        return "stopped by the time limit"
    if trial["exit"] == 0:
        peak = trial.get("peak_allocated_gb")
        return f"ok ({peak} GiB)" if peak is not None else "ok"
    return "OOM" if trial["oom"] else "error"


# --------------------------------------------------------------------------------------------- the runs

def build_model(folder: Path, cpu: bool) -> tuple[str, int]:
    """The model both backends load (built once), and its matmul parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from llama_lora.data.chat_template import ensure_chat_template
    from llama_lora.model.assets import smollm2_dir

    if cpu:
        path = str(smollm2_dir())
        config = AutoConfig.from_pretrained(path)
    else:
        path = str(folder)
        config = LlamaConfig(**LLAMA31_8B, torch_dtype="bfloat16")
        if not (folder / "config.json").exists():
            from llama_lora.model.llama3_tokenizer import llama31_tokenizer_dir

            torch.manual_seed(0)
            with torch.device("cuda"):
                model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
            model.save_pretrained(folder, safe_serialization=True)
            del model
            # exactly Llama 3.1's 128,256 entries: one more (the package's <|image|>) made Unsloth resize the
            # embeddings and save them with every adapter
            tokenizer = AutoTokenizer.from_pretrained(llama31_tokenizer_dir())
            ensure_chat_template(tokenizer)
            tokenizer.save_pretrained(folder)
    with torch.device("meta"):
        empty = AutoModelForCausalLM.from_config(config)
    matmul = sum(m.weight.numel() for m in empty.modules() if isinstance(m, torch.nn.Linear))
    return path, matmul


def synthetic_rows(folder: Path, seq_len: int, n_rows: int, seed: int = 0) -> Path:
    """Plain-text rows longer than seq_len; with --overlength truncate each trains as exactly seq_len tokens."""
    rng = random.Random(seed)
    words = "the of and to in is was for on that with as by at from it this be are have an which".split()
    path = folder / f"rows-{seq_len}-{n_rows}.jsonl"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(seq_len + 64))}) + "\n"
                                for _ in range(n_rows)))
    return path


def bundled_lengths() -> list[int]:
    """Token lengths of the bundled dialogues (SmolLM2's template, every row kept)."""
    from transformers import AutoTokenizer

    from llama_lora.data.prepare import prepare
    from llama_lora.model.assets import smollm2_dir
    from llama_lora.options.config import TrainConfig

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    return [len(row["input_ids"]) for row in prepare(TrainConfig(eval_fraction=0), tokenizer).train.rows]


def real_length_rows(folder: Path, max_len: int, n_rows: int, seed: int = 0) -> Path:
    """Plain-text rows whose token lengths follow the bundled dialogues' histogram (301 rows, 166-985 tokens,
    median 386) stretched so its longest row is max_len tokens: at 2048 a long-tailed chat distribution of
    345-2048 tokens, median ~800, as 8B fine-tuning data typically is. Lengths are drawn with replacement;
    every word is one token, plus BOS and EOS."""
    path = folder / f"real-{max_len}-{n_rows}.jsonl"
    if path.exists():
        return path
    rng = random.Random(seed)
    bundled = bundled_lengths()
    words = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "it"]
    lengths = [max(3, round(rng.choice(bundled) * max_len / max(bundled))) for _ in range(n_rows)]
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(n - 2))}) + "\n"
                            for n in lengths))
    return path


@dataclass(frozen=True)
class Trial:
    """One training process: its exit status, run folder, whether it ran out of GPU memory, its log."""

    code: int
    out: Path
    oom: bool
    log: Path
    seconds: float


def train(backend: str, model: str, setup: Setup, flags: dict[str, Any], seq_len: int, steps: int,
          work: Path) -> Trial:
    """One training process through the entry script; its whole output is kept under work/logs."""
    batch = flags.get("batch_size", 1) * flags.get("grad_accum", 1)
    # real-length rows: enough for every step even when packing fits several rows into one
    data = (real_length_rows(work / "data", seq_len, steps * batch * 8) if setup.real_lengths
            else synthetic_rows(work / "data", seq_len, steps * batch))
    out = work / "runs" / f"{setup.name}-{backend}-{seq_len}-{flags.get('batch_size')}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(f".{out.name}.partial"), ignore_errors=True)
    args = [sys.executable, str(SCRIPTS[backend]), "--model", model, "--dataset", str(data), "--format", "text",
            "--overlength", "truncate", "--max-seq-length", str(seq_len), "--max-steps", str(steps),
            "--eval-fraction", "0", "--save-steps", "0", "--warmup-ratio", "0", "--output-dir", str(out)]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        args += [flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    log = work / "logs" / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as sink:
        done = subprocess.run(args, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True)
    # The pipeline reports a CUDA OOM as "CUDA ran out of memory" (guards.oom_advice); anything else is a bug
    # to look at, never a sign that the configuration is too large.
    oom = done.returncode != 0 and "CUDA ran out of memory" in log.read_text(errors="replace")
    return Trial(done.returncode, out, oom, log, round(time.perf_counter() - started, 1))


def largest(fits: Any, start: int, step: int, limit: int) -> int:
    """The largest multiple of `step` for which fits(value) holds: doubling from `start`, then bisection."""
    good, bad = 0, None
    value = start
    while value <= limit:
        if fits(value):
            good, value = value, value * 2
        else:
            bad = value
            break
    if good == 0:
        return 0
    high = bad if bad is not None else good
    while bad is not None and high - good > step:
        middle = (good + high) // 2 // step * step
        if middle in (good, high):
            break
        if fits(middle):
            good = middle
        else:
            high = middle
    return good


class ProbeFailed(RuntimeError):
    """A search probe failed for a reason other than running out of memory."""


def probe(trials: list[dict[str, Any]], backend: str, model: str, setup: Setup, flags: dict[str, Any],
          seq_len: int, work: Path) -> bool:
    """One training step: True if it completed, False on CUDA OOM; any other failure stops the search."""
    trial = train(backend, model, setup, flags, seq_len, 1, work)
    peak = None
    if trial.code == 0:
        peak = run_record.read(trial.out).value("memory.after_training.gpu_peak_allocated_gib")
    trials.append({"batch_size": flags.get("batch_size"), "seq_len": seq_len, "exit": trial.code,
                   "oom": trial.oom, "seconds": trial.seconds, "peak_allocated_gb": peak})
    if trial.code != 0 and not trial.oom:
        raise ProbeFailed(f"exit {trial.code}, see {trial.log}: {trial.log.read_text(errors='replace')[-1500:]}")
    return trial.code == 0


@dataclass(frozen=True)
class Search:
    """Where the searches of C (batch) and D (length) start and stop; `batch_size` skips C's search."""

    max_context: int = 131072  # Llama 3.1's trained context (max_position_embeddings)
    length_start: int = 8192
    length_step: int = 1024
    batch_size: int | None = None

    @classmethod
    def for_cpu(cls) -> "Search":
        return cls(max_context=1024, length_start=256, length_step=128)


def run_setup(backend: str, model: str, setup: Setup, work: Path, matmul: int, peak: float | None,
              cpu: bool, search: Search) -> dict[str, Any]:
    """Train one backend in one configuration (after its search, if any) and summarise it."""
    flags, seq_len = dict(setup.flags), setup.seq_len
    trials: list[dict[str, Any]] = []
    try:
        if setup.search == "batch_size":
            flags["batch_size"] = search.batch_size or largest(
                lambda b: probe(trials, backend, model, setup, {**flags, "batch_size": b}, seq_len, work),
                1, 1, 4 if cpu else 64)
        if setup.search == "max_seq_length":
            seq_len = largest(lambda n: probe(trials, backend, model, setup, flags, n, work),
                              search.length_start, search.length_step, search.max_context)
            return {"status": "ok" if seq_len else "nothing fits", "max_seq_length": seq_len,
                    "search_cap": search.max_context, "trials": trials}
    except ProbeFailed as err:
        return {"status": "search failed", "error": str(err), "trials": trials}
    if not flags.get("batch_size"):
        return {"status": "nothing fits", "trials": trials}
    trial = train(backend, model, setup, flags, seq_len, setup.steps, work)
    if trial.code != 0:
        return {"status": f"failed (exit {trial.code}{', OOM' if trial.oom else ''})", "trials": trials,
                "error": trial.log.read_text(errors="replace")[-1500:]}
    out = trial.out
    metrics = run_record.read(out)
    log = [json.loads(line) for line in (out / files.TRAIN_LOG).read_text().splitlines()]
    speed = throughput(log, setup.warmup)
    memory = metrics.memory.after_training
    return {
        "status": "ok", "batch_size": flags.get("batch_size"), "seq_len": seq_len, **speed,
        **mfu(speed["median_tokens_per_s"], matmul, peak, bool(flags.get("gradient_checkpointing"))),
        "peak_allocated_gb": memory.gpu_peak_allocated_gib, "peak_reserved_gb": memory.gpu_peak_reserved_gib,
        "peak_rss_gb": memory.cpu_peak_rss_gib, "load_s": metrics.runtime_s.load,
        "padding_share": (metrics.batching or {}).get("padding_share"),
        "attention": (metrics.batching or {}).get("attention_implementation"),
        "losses": [entry["loss"] for entry in log], "trials": trials,
        "libraries": metrics.libraries, "device": metrics.device.model_dump(mode="json", exclude_unset=True),
    }


def environment(cpu: bool) -> dict[str, Any]:
    import importlib.metadata

    import torch

    libraries = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo", "xformers"):
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libraries[name] = None
    if cpu or not torch.cuda.is_available():
        return {"device": f"CPU ({platform.processor() or platform.machine()})", "libraries": libraries}
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip()
    return {"device": torch.cuda.get_device_name(0), "driver": driver, "cuda": torch.version.cuda,
            "libraries": libraries}


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    return next((flops for fragment, flops in PEAK_BF16_FLOPS.items() if fragment in device), None)


@click.command()
@click.option("--configs", "names", default="A,B,C,D", show_default=True,
              help="Comma-separated configurations; R-padded,R-padding-free,R-packed: real-length rows, three --batching modes.")
@click.option("--backends", default="peft,unsloth", show_default=True)
@click.option("--cpu", is_flag=True, help="CPU smoke mode: embedded SmolLM2, lengths / 8, a few steps, no MFU.")
@click.option("--peak-tflops", type=float, help="The device's dense bf16 peak, if not in the built-in table.")
@click.option("--work", type=click.Path(path_type=Path), default=Path("benchmarks/.work"), show_default=True,
              help="Where the 8B checkpoint (16 GB), synthetic data and runs go.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
@click.option("--max-context", type=int, default=Search.max_context, show_default=True,
              help="Where D's search stops: Llama 3.1's trained context (max_position_embeddings).")
@click.option("--length-start", type=int, default=Search.length_start, show_default=True,
              help="D's search doubles from this length (a shorter one fits if this one does).")
@click.option("--length-step", type=int, default=Search.length_step, show_default=True,
              help="D's bisection stops at this granularity.")
@click.option("--batch-size", type=int, help="Run C at this batch instead of searching for the largest.")
def main(names: str, backends: str, cpu: bool, peak_tflops: float | None, work: Path, out: Path,
         max_context: int, length_start: int, length_step: int, batch_size: int | None) -> None:
    import torch

    cpu = cpu or not torch.cuda.is_available()
    env = environment(cpu)
    model, matmul = build_model(work / "llama-3.1-8b-random", cpu)
    peak = None if cpu else peak_flops(env["device"], peak_tflops)
    setups = configs(cpu)
    command = "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])
    result: dict[str, Any] = {
        "commands": [command], "date": time.strftime("%Y-%m-%d"),
        "model": "embedded SmolLM2-135M" if cpu else "Llama-3.1-8B architecture, random weights",
        "matmul_parameters": matmul, "peak_flops": peak, "environment": env, "configs": {},
    }
    stem = out / f"{'cpu' if cpu else env['device'].replace(' ', '-')}-{result['date']}"
    result = merged_with_earlier(stem.with_suffix(".json"), result)
    search = Search.for_cpu() if cpu else Search(max_context, length_start, length_step, batch_size)
    for name in names.split(","):
        setup = setups[name]
        earlier = result["configs"].get(name, {}).get("backends", {})
        runs: dict[str, Any] = {b: r for b, r in earlier.items() if b not in backends.split(",")}
        result["configs"][name] = {"title": setup.title, "backends": runs, "loss_difference": None}
        for backend in backends.split(","):
            runs[backend] = {**run_setup(backend, model, setup, work, matmul, peak, cpu, search), "command": command}
            print(json.dumps({name: {backend: {k: v for k, v in runs[backend].items()
                                               if k not in ("losses", "libraries", "error")}}}), flush=True)
            result["configs"][name]["loss_difference"] = parity(runs)
            write_results(stem, result)  # after every run, so a stopped benchmark keeps what it measured
    print(to_markdown(result))


def merged_with_earlier(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Configurations run by separate commands on the same day, device and libraries share one record
    (a GPU lease may not fit all four in one go); a different environment starts a new record."""
    if not path.exists():
        return result
    earlier = json.loads(path.read_text())
    if earlier.get("environment") != result["environment"] or earlier.get("model") != result["model"]:
        raise click.UsageError(f"{path} was measured in another environment; move it away or use --out")
    return {**result, "commands": [*earlier.get("commands", []), *result["commands"]],
            "configs": dict(earlier.get("configs", {}))}


def write_results(stem: Path, result: dict[str, Any]) -> None:
    """The JSON record and the markdown table, each written whole then renamed into place."""
    from llama_lora.atomic_files import write_report

    write_report(stem, result, to_markdown(result))


if __name__ == "__main__":
    main()
