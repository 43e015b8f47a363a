"""The user's whole path on a GPU in one command that fits a short GPU loan, rehearsed on CPU first.

    python benchmarks/gpu_check.py                 # CUDA: both backends, QLoRA and 16-bit LoRA
    python benchmarks/gpu_check.py --quick         # CUDA: QLoRA only
    python benchmarks/gpu_check.py --cpu           # the same steps and report on CPU, at tiny sizes

Every step is one of the project's own commands, run as a subprocess exactly as a user types it, on the embedded
SmolLM2-135M-Instruct (real weights, so learning shows) and the bundled dialogues:

  plan      `--plan` for each run's options (its total is set next to the run's measured peak)
  train     each backend x variant, with samples: eval loss must fall (and, at GPU sizes, the style checks rise)
  resume    the same command killed (SIGKILL) once a checkpoint is complete, then `--resume`: losses must equal
            the uninterrupted run's within the tolerance
  compare   `compare_backends.py` on each variant's two runs: fairness must pass; the loss-parity verdict
  merge     `use_adapter.py merge` (a QLoRA run onto its dequantized NF4 base); merged vs base + adapter logits
  gguf      `use_adapter.py gguf`: model, LoRA and Modelfile written
  check     `use_adapter.py check --unsloth`: vLLM-ready (LoRA weights only, no embedding matrices) and Unsloth's
            loader computes the same logits as plain PEFT
  generate  `use_adapter.py generate`
  swap      `use_adapter.py swap` of both backends' adapters on one base

It writes one record, <out>/gpu-check-<device>-<date>.json and .md (device, versions, every figure, pass/fail per
step with the reason), keeps each process's log under <work>/logs, and exits 1 if any step failed.
Independent processes run side by side (--jobs; the model is small, so one GPU holds them all).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import click

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llama_lora.backend import BACKENDS  # after the path insert; neither imports anything heavy
from llama_lora.run import files

SCRIPTS = {name: spec.script for name, spec in BACKENDS.items()}
VARIANTS = {"qlora": ("--load-in-4bit",), "lora16": ("--no-load-in-4bit",)}
LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth",
             "unsloth_zoo", "xformers", "triton")
# A merged model must reproduce base + adapter: the bound the CPU tests hold bf16 and QLoRA merges to.
MERGE_TOLERANCE = 0.05  # of the largest logit


@dataclass(frozen=True)
class Sizes:
    """How big each step is: GPU sizes teach the style in a short loan; CPU sizes only prove the path works."""

    train_flags: tuple[str, ...]
    kill_at: int  # the interrupted run is killed once checkpoint-<kill_at> is complete
    resume_tolerance: float  # largest relative per-step loss difference, resumed vs uninterrupted
    expect_style: bool  # whether the samples' style checks must rise at these sizes
    generate_tokens: int
    rows: int | None  # None: the whole bundled data; else its first N train rows and N // 4 eval rows
    timeout_s: int  # for any one process
    # every run gets every step (GPU); else each command runs once (CPU, to keep the rehearsal short): plan,
    # resume, merge, gguf and generate on the PEFT run, check --unsloth on the Unsloth one
    every_run: bool = True


# 60 steps of batch 2 at lr 1e-3 taught the bundled style (4/4 on each check) on CPU (shared/ENVIRONMENT.md).
GPU = Sizes(("--max-steps", "60", "--batch-size", "2", "--grad-accum", "1", "--learning-rate", "1e-3",
             "--max-seq-length", "1024", "--save-steps", "20"),
            kill_at=40,
            # CUDA kernels are not bitwise deterministic (atomics in backward, autotuned matmuls): a resumed run
            # differs in rounding. Provisional bound until the first GPU record measures it (1%).
            resume_tolerance=0.01, expect_style=True, generate_tokens=64, rows=None, timeout_s=240)
# A CPU step costs about 6 x 135M x tokens FLOPs: rows are cut to 128 tokens, one a step (the question and the
# start of each answer still train), so the rehearsal's time goes to starting processes, not to arithmetic.
CPU = Sizes(("--max-steps", "2", "--batch-size", "1", "--grad-accum", "1", "--learning-rate", "1e-3",
             "--max-seq-length", "128", "--overlength", "truncate", "--save-steps", "1", "--r", "8",
             "--samples", "1", "--sample-max-tokens", "4"),
            kill_at=1, resume_tolerance=1e-4, expect_style=False, generate_tokens=4, rows=4, timeout_s=1800,
            every_run=False)


@dataclass
class Step:
    """One step of the check: what ran, whether it passed and why, and the figures it produced."""

    name: str
    status: str = "pass"  # pass, fail or skipped
    reason: str = ""
    figures: dict[str, Any] | None = None
    commands: list[str] | None = None
    seconds: float = 0.0

    def fail(self, reason: str) -> Step:
        self.status, self.reason = "fail", reason
        return self


@dataclass(frozen=True)
class Done:
    """A finished process: exit status, its whole output (also in `log`), and how long it took."""

    code: int
    output: str
    log: Path
    seconds: float
    command: str


class Runner:
    """Runs the project's commands as a user would: the repository's scripts, one process each, logged."""

    def __init__(self, work: Path, sizes: Sizes):
        self.work, self.sizes = work, sizes
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def args(self, script: str, *args: str) -> list[str]:
        return [sys.executable, str(REPO / script), *args]

    def cwd(self, name: str) -> Path:
        """A working folder per process: Unsloth writes its compiled kernels into the current directory."""
        folder = self.work / "cwd" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def run(self, name: str, args: list[str]) -> Done:
        log = self.logs / f"{name}.log"
        started = time.perf_counter()
        with log.open("w") as sink:
            try:
                code = subprocess.run(args, cwd=self.cwd(name), stdout=sink, stderr=subprocess.STDOUT,
                                      env=child_env(), timeout=self.sizes.timeout_s, check=False).returncode
            except subprocess.TimeoutExpired:
                code = -1
                sink.write(f"\n[gpu_check: stopped after {self.sizes.timeout_s} s]\n")
        return Done(code, log.read_text(errors="replace"), log, round(time.perf_counter() - started, 1),
                    shown(args))

    def run_killed(self, name: str, args: list[str], staging: Path, step: int) -> Done:
        """Start a training and SIGKILL it as soon as checkpoint-<step> is complete (as a pre-empted machine)."""
        log = self.logs / f"{name}.log"
        # the seal, not trainer_state.json: the trainer writes the seal last, and a checkpoint without it is one
        # that --resume rightly refuses
        marker = staging / "checkpoints" / f"checkpoint-{step}" / files.CHECKPOINT_SEAL
        started = time.perf_counter()
        with log.open("w") as sink:
            process = subprocess.Popen(args, cwd=self.cwd(name), stdout=sink, stderr=subprocess.STDOUT,
                                       env=child_env())
            while not marker.exists() and process.poll() is None:
                if time.perf_counter() - started > self.sizes.timeout_s:
                    break
                time.sleep(0.2)
            killed = process.poll() is None
            if killed:
                process.send_signal(signal.SIGKILL)
            process.wait()
        code = -9 if killed and marker.exists() else process.returncode
        return Done(code, log.read_text(errors="replace"), log, round(time.perf_counter() - started, 1),
                    shown(args))


def child_env() -> dict[str, str]:
    """The user's environment, unbuffered and offline (the GPU machines have no network)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def shown(args: list[str]) -> str:
    """A command as a user would type it in the repository."""
    return " ".join(["python", *(str(Path(a).relative_to(REPO)) if a.startswith(str(REPO) + "/") else a
                                 for a in args[1:])])


def tail(done: Done, lines: int = 12) -> str:
    return "\n".join(done.output.strip().splitlines()[-lines:])


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def read_metrics(folder: Path) -> dict[str, Any]:
    """A run folder's metrics.json through the typed run record (current key names); OSError when it has none."""
    from llama_lora.run import run_record

    record = run_record.read(folder)
    if record is None:
        raise FileNotFoundError(folder / files.METRICS)
    return record.dump()


# --------------------------------------------------------------------------------------------- the steps

@dataclass(frozen=True)
class Run:
    """One training run of the check: backend x variant, its command-line flags and folder."""

    backend: str
    variant: str
    flags: tuple[str, ...]
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.backend}"


def train_step(runner: Runner, run: Run) -> Step:
    """The README's training command: eval loss falls, the style checks rise (at GPU sizes)."""
    step = Step(f"train {run.name}")
    done = runner.run(f"train-{run.name}", runner.args(SCRIPTS[run.backend], *run.flags,
                                                       "--output-dir", str(run.folder)))
    step.commands, step.seconds = [done.command], done.seconds
    if done.code != 0:
        return step.fail(f"exit {done.code}: {tail(done)}")
    metrics = read_metrics(run.folder)
    memory = metrics["memory"]["after_training"]
    style = (metrics.get("samples") or {}).get("style", {})
    step.figures = {
        "eval_loss": metrics["eval_loss"], "final_train_loss": metrics["final_train_loss"],
        "steps": metrics["steps"], "tokens_per_s": metrics["tokens"]["per_second"],
        "runtime_s": metrics["runtime_s"], "device": metrics["device"], "memory_after_training": memory,
        "style": style, "non_lora_tensors": non_lora_tensors(run.folder),
    }
    reasons = []
    before, after = metrics["eval_loss"]["before"], metrics["eval_loss"]["after"]
    if not after < before:
        reasons.append(f"eval loss did not fall ({before:.4f} -> {after:.4f})")
    if runner.sizes.expect_style and style:
        rose = {k: (style["before"][k], style["after"][k]) for k in style["after"]
                if style["after"][k] <= style["before"][k] and style["before"][k] < 1}
        if rose:
            reasons.append(f"style checks did not rise: {rose}")
    if step.figures["non_lora_tensors"]:
        reasons.append(f"the adapter holds non-LoRA tensors: {step.figures['non_lora_tensors'][:4]}")
    step.reason = (f"eval loss {before:.4f} -> {after:.4f}" + ("" if runner.sizes.expect_style else
                   "; style checks recorded, not expected to rise at these sizes"))
    return step.fail("; ".join(reasons)) if reasons else step


def non_lora_tensors(folder: Path) -> list[str]:
    """Tensor names in the adapter that are not LoRA weights (for example resized embedding matrices)."""
    from llama_lora.use.adapter_checks import tensor_names

    return [name for name in tensor_names(folder) if "lora_" not in name]


def losses(folder: Path) -> list[float]:
    return [entry["loss"] for entry in read_metrics(folder)["loss_history"]]


def resume_step(runner: Runner, run: Run, straight: Run) -> Step:
    """Kill a run at a checkpoint, resume it, and compare its losses with the uninterrupted run's."""
    step = Step(f"resume {run.name}")
    staging = run.folder.with_name(f".{run.folder.name}.partial")
    args = runner.args(SCRIPTS[run.backend], *run.flags, "--output-dir", str(run.folder))
    killed = runner.run_killed(f"killed-{run.name}", args, staging, runner.sizes.kill_at)
    step.commands = [killed.command + f"   # SIGKILL once checkpoint-{runner.sizes.kill_at} is complete"]
    if killed.code != -9:
        return step.fail(f"the run was not killed at checkpoint-{runner.sizes.kill_at} (exit {killed.code}): "
                         f"{tail(killed)}")
    if run.folder.exists():
        return step.fail("a killed run left a folder that looks finished")
    resumed = runner.run(f"resumed-{run.name}", [*args, "--resume"])
    step.commands.append(resumed.command)
    step.seconds = killed.seconds + resumed.seconds
    if resumed.code != 0:
        return step.fail(f"--resume exit {resumed.code}: {tail(resumed)}")
    if not (straight.folder / files.METRICS).exists():
        return step.fail(f"no uninterrupted run to compare with ({straight.name} failed)")
    metrics = read_metrics(run.folder)
    a, b = losses(straight.folder), losses(run.folder)
    diffs = [abs(y - x) / abs(x) for x, y in zip(a, b)]
    worst = max(diffs) if diffs else None
    step.figures = {"resumed_from_step": metrics["resumed_from_step"], "steps": [len(a), len(b)],
                    "max_relative_loss_difference": worst, "tolerance": runner.sizes.resume_tolerance,
                    "uninterrupted_losses": a, "resumed_losses": b}
    if metrics["resumed_from_step"] != runner.sizes.kill_at or len(a) != len(b):
        return step.fail(f"resumed from step {metrics['resumed_from_step']} with {len(b)} logged steps; expected "
                         f"{runner.sizes.kill_at} and {len(a)}")
    step.reason = f"resumed from step {runner.sizes.kill_at}; largest per-step loss difference {worst:.2e}"
    if worst > runner.sizes.resume_tolerance:
        return step.fail(step.reason + f" is above the tolerance {runner.sizes.resume_tolerance:g}")
    return step


def compare_step(runner: Runner, variant: str, peft: Run, unsloth: Run) -> Step:
    """compare_backends.py on one variant's two runs: the fairness check must pass."""
    step = Step(f"compare {variant}")
    out = runner.work / "compare" / variant
    done = runner.run(f"compare-{variant}", runner.args("compare_backends.py", str(peft.folder),
                                                        str(unsloth.folder), "--out", str(out)))
    step.commands, step.seconds = [done.command], done.seconds
    if done.code != 0:
        return step.fail(f"exit {done.code}: {tail(done)}")
    record = read_json(out / "comparison.json")
    parity = record["loss_parity"]
    step.figures = {"fair": record["fair"], "mismatches": record["mismatches"], "verdict": record["verdict"],
                    "loss_parity": {k: v for k, v in parity.items() if k != "per_step"},
                    "rows": record["rows"]}
    step.reason = (f"fairness passed; loss parity {parity['verdict']} (mean {parity.get('mean_relative_difference')}"
                   f", max {parity.get('max_relative_difference')})")
    if not record["fair"]:
        return step.fail(f"fairness failed: {record['mismatches']}")
    return step


def merge_step(runner: Runner, run: Run) -> Step:
    """use_adapter.py merge; the merged model's logits must match base + adapter."""
    step = Step(f"merge {run.name}")
    out = runner.work / "merged" / run.name
    done = runner.run(f"merge-{run.name}", runner.args("use_adapter.py", "merge", str(run.folder), str(out),
                                                       "--overwrite"))
    step.commands, step.seconds = [done.command], done.seconds
    if done.code != 0:
        return step.fail(f"exit {done.code}: {tail(done)}")
    report = read_json(out / "merge.json")
    step.figures = {k: report[k] for k in ("compared_with", "max_abs_diff", "max_abs_logit", "top1_agreement")}
    step.reason = (f"largest |logit difference| {report['max_abs_diff']:.3g} of {report['max_abs_logit']:.1f}, "
                   f"same top token at {report['top1_agreement']:.1%}")
    if report["max_abs_diff"] > MERGE_TOLERANCE * report["max_abs_logit"]:
        return step.fail(step.reason + f": above {MERGE_TOLERANCE:.0%} of the logit scale")
    return step


def gguf_step(runner: Runner, run: Run) -> Step:
    """use_adapter.py gguf: the model GGUFs, the LoRA GGUF and the Modelfile."""
    step = Step(f"gguf {run.name}")
    out = runner.work / "gguf" / run.name
    shutil.rmtree(out, ignore_errors=True)
    done = runner.run(f"gguf-{run.name}", runner.args("use_adapter.py", "gguf", str(run.folder), "--out", str(out)))
    step.commands, step.seconds = [done.command], done.seconds
    if done.code != 0:
        return step.fail(f"exit {done.code}: {tail(done)}")
    files = sorted(p.name for p in out.iterdir()) if out.exists() else []
    step.figures = {"files": {name: (out / name).stat().st_size for name in files}}
    missing = [kind for kind, ok in (("model", any(f.endswith(".gguf") and "LoRA" not in f for f in files)),
                                     ("LoRA", any(f.endswith("-LoRA.gguf") for f in files)),
                                     ("Modelfile", "Modelfile" in files)) if not ok]
    step.reason = ", ".join(files)
    return step.fail(f"missing {', '.join(missing)} in {files}") if missing else step


def check_step(runner: Runner, run: Run) -> Step:
    """use_adapter.py check --unsloth: vLLM-ready, and Unsloth's loader computes what plain PEFT computes."""
    step = Step(f"check {run.name}")
    done = runner.run(f"check-{run.name}", runner.args("use_adapter.py", "check", str(run.folder), "--unsloth"))
    step.commands, step.seconds = [done.command], done.seconds
    lines = [line for line in done.output.splitlines() if line.startswith(("vLLM:", "  warning:", "plain PEFT:",
                                                                             "Unsloth loader:"))]
    step.figures = {"output": lines}
    step.reason = " | ".join(lines)
    if done.code != 0:
        return step.fail(f"exit {done.code}: {tail(done)}")
    if not any(line.startswith("vLLM: no problem found") for line in lines):
        return step.fail("vLLM warnings: " + step.reason)
    return step


def generate_step(runner: Runner, run: Run) -> Step:
    """use_adapter.py generate on one prompt."""
    step = Step(f"generate {run.name}")
    done = runner.run(f"generate-{run.name}", runner.args(
        "use_adapter.py", "generate", str(run.folder), "-p", "Why do we have seasons?", "--max-new-tokens",
        str(runner.sizes.generate_tokens), "--no-stream"))
    step.commands, step.seconds = [done.command], done.seconds
    if done.code != 0:
        return step.fail(f"exit {done.code}: {tail(done)}")
    ending = re.search(r"^\[(\d+) tokens, (.+)\]$", done.output, re.MULTILINE)
    if not ending:
        return step.fail(f"no answer printed: {tail(done)}")
    step.figures = {"tokens": int(ending.group(1)), "ending": ending.group(2), "output": tail(done, 8)}
    step.reason = f"{ending.group(1)} tokens, {ending.group(2)}"
    return step


def swap_step(runner: Runner, variant: str, runs: list[Run]) -> Step:
    """use_adapter.py swap of the variant's adapters: one base, shared by all."""
    step = Step(f"swap {variant}")
    done = runner.run(f"swap-{variant}", runner.args("use_adapter.py", "swap", *(str(r.folder) for r in runs),
                                                     "--max-new-tokens", str(runner.sizes.generate_tokens)))
    step.commands, step.seconds = [done.command], done.seconds
    if done.code != 0:
        return step.fail(f"exit {done.code}: {tail(done)}")
    switched = re.findall(r"^\[(.+)\] \(switched in ([\d.]+) ms\)$", done.output, re.MULTILINE)
    step.figures = {"switched_ms": {name: float(ms) for name, ms in switched}}
    shared = f"shared by all {len(runs)} adapters: yes" in done.output
    step.reason = f"{len(switched)} answers; base weights shared: {'yes' if shared else 'NO'}"
    if len(switched) != len(runs) + 1 or not shared:
        return step.fail(step.reason + f": {tail(done)}")
    return step


def plan_step(runner: Runner, run: Run) -> Step:
    """`--plan` with the run's options; its total next to the run's measured GPU peak."""
    step = Step(f"plan {run.name}")
    done = runner.run(f"plan-{run.name}", runner.args(SCRIPTS[run.backend], *run.flags, "--plan"))
    step.commands, step.seconds = [done.command], done.seconds
    total = re.search(r"^\W*total\W+([\d.]+)", done.output, re.MULTILINE)
    if done.code != 0 or not total:
        return step.fail(f"exit {done.code}: {tail(done)}")
    step.figures = {"plan_total_gib": float(total.group(1))}
    return step


def set_plan_against_peak(step: Step, run: Run) -> Step:
    """Add the measured peak (torch's max allocated, GiB) to a plan step, once its run has trained."""
    if step.status != "pass":
        return step
    try:
        memory = read_metrics(run.folder)["memory"]["after_training"]
    except OSError:
        return step.fail(f"no measured peak: {run.name} did not complete")
    peak, plan = memory.get("gpu_peak_allocated_gib"), step.figures["plan_total_gib"]
    if peak is None:
        step.status = "skipped"
        step.reason = (f"plan {plan} GiB; no GPU peak to set it against on CPU (process RSS "
                       f"{memory.get('cpu_peak_rss_gib')} GiB is not what the plan describes)")
        return step
    step.figures.update({"measured_peak_allocated_gib": peak, "plan_over_measured": round(plan / peak, 3)})
    step.reason = f"plan {plan} GiB, measured peak {peak} GiB ({plan / peak - 1:+.1%})"
    # the plan pads every row to --max-seq-length, so it should not fall short of a real run's peak
    if run.backend == "peft" and plan < peak * 0.9:
        return step.fail(step.reason + ": the plan falls more than 10% short")
    return step


# --------------------------------------------------------------------------------------------- the check

def small_dataset(folder: Path, rows: int) -> Path:
    """The first `rows` bundled training dialogues and rows // 4 eval ones (CPU sizes)."""
    source = REPO / "data" / "teacher_student"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", rows), ("eval", max(1, rows // 4))):
        lines = (source / f"{split}.jsonl").read_text().splitlines()[:n]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def in_parallel(jobs: int, tasks: list[Callable[[], Step]]) -> list[Step]:
    """Run independent steps side by side, results in the order given."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda task: task(), tasks))


def run_check(work: Path, sizes: Sizes, variants: tuple[str, ...], jobs: int,
              report: Callable[[list[Step]], None]) -> list[Step]:
    """Every step, in phases of independent processes: plans, trainings (and the interrupted ones), the rest.
    `report` gets the steps done so far after each phase, so a loan that ends early still leaves a record."""
    runner = Runner(work, sizes)
    data = ("--dataset", str(small_dataset(work / "data", sizes.rows))) if sizes.rows else ()
    base = ("--model", "smollm2", *data, *sizes.train_flags)
    runs = {(b, v): Run(b, v, (*base, *VARIANTS[v]), work / "runs" / f"{v}-{b}") for v in variants
            for b in SCRIPTS}
    first = variants[0]
    resumed = {key: Run(r.backend, r.variant, r.flags, work / "runs" / f"{r.name}-resumed")
               for key, r in runs.items() if key[1] == first and (sizes.every_run or key[0] == "peft")}
    for folder in [r.folder for r in [*runs.values(), *resumed.values()]]:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(folder.with_name(f".{folder.name}.partial"), ignore_errors=True)

    planned = list(runs.values()) if sizes.every_run else [runs["peft", first]]
    plans = [plan_step(runner, planned[0])]  # the first process converts the embedded model once, for the others
    plans += in_parallel(jobs, [partial(plan_step, runner, r) for r in planned[1:]])
    report(plans)
    trained = in_parallel(jobs, [*(partial(train_step, runner, r) for r in runs.values()),
                                 *(partial(resume_step, runner, r, runs[k]) for k, r in resumed.items())])
    report([*trained, *plans])
    per_run = [(r, f) for r in runs.values() for f in (merge_step, gguf_step, check_step, generate_step)
               if sizes.every_run or (r.variant == first and (r.backend == "unsloth") == (f is check_step))]
    pairs = {v: [runs[b, v] for b in SCRIPTS] for v in variants}
    tools = [
        *(needs(f"compare {v}", pair, partial(compare_step, runner, v, *pair)) for v, pair in pairs.items()),
        *(needs(f"{f.__name__[:-5]} {r.name}", [r], partial(f, runner, r)) for r, f in per_run),
        *(needs(f"swap {v}", pair, partial(swap_step, runner, v, pair)) for v, pair in pairs.items()),
    ]
    used = in_parallel(jobs, tools)
    return [*trained, *used, *(set_plan_against_peak(s, r) for s, r in zip(plans, planned))]


def needs(name: str, runs: list[Run], action: Callable[[], Step]) -> Callable[[], Step]:
    """A step that reads run folders: it fails at once, naming them, if any of its runs did not complete."""
    def task() -> Step:
        absent = [r.name for r in runs if not (r.folder / files.METRICS).exists()]
        return Step(name, "fail", f"not run: {', '.join(absent)} did not complete") if absent else action()
    return task


def environment(cpu: bool) -> dict[str, Any]:
    """Device, driver and library versions."""
    import torch

    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libraries[name] = None
    if cpu or not torch.cuda.is_available():
        return {"device": f"CPU ({platform.processor() or platform.machine()})", "python": platform.python_version(),
                "libraries": libraries}
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"device": torch.cuda.get_device_name(0), "driver": driver, "cuda": torch.version.cuda,
            "python": platform.python_version(), "libraries": libraries}


def to_markdown(record: dict[str, Any]) -> str:
    """The record as a page: environment, one line per step with its reason, the commands."""
    env = record["environment"]
    passed = sum(s["status"] == "pass" for s in record["steps"])
    failed = [s["name"] for s in record["steps"] if s["status"] == "fail"]
    lines = [f"# GPU check: {env['device']}, {record['date']}", "",
             f"Command: `{record['command']}`  ", f"Sizes: {record['sizes']}  ",
             f"Environment: Python {env['python']}, "
             + ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
             + (f", driver {env['driver']}, CUDA {env['cuda']}" if env.get("driver") else "") + "  ",
             f"Wall time: {record['seconds']} s  ", "",
             ("**UNFINISHED** (stopped before its last phase)" if not record["finished"] else
              f"**{'PASSED' if not failed else 'FAILED'}**") + f": {passed} of {len(record['steps'])} steps passed"
             + (f"; failed: {', '.join(failed)}" if failed else ""), "",
             "| step | status | seconds | result |", "|---|---|---|---|"]
    for s in record["steps"]:
        reason = s["reason"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {reason} |")
    lines += ["", "Commands, as run (from the repository root; each process's log is in the work folder's logs/):",
              "", "```"]
    lines += [command for s in record["steps"] for command in s["commands"] or []]
    lines += ["```", ""]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cpu", is_flag=True, help="Rehearse on CPU at tiny sizes (same steps and report).")
@click.option("--quick", is_flag=True, help="QLoRA only (the GPU default), not also 16-bit LoRA.")
@click.option("--variants", default=None, help="Comma-separated: qlora, lora16 (default: both on GPU, "
                                               "lora16 on CPU; --quick: qlora).")
@click.option("--jobs", type=int, default=None, help="Processes side by side (default: 6 on GPU, 1 on CPU).")
@click.option("--work", type=click.Path(path_type=Path), default=Path("benchmarks/.work/gpu-check"),
              show_default=True, help="Runs, merged models, GGUF files and every process's log.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
def main(cpu: bool, quick: bool, variants: str | None, jobs: int | None, work: Path, out: Path) -> None:
    """Train, resume, compare, merge, export, check, generate and swap, as a user would; record pass/fail."""
    import torch

    from llama_lora.atomic_files import write_json, write_text

    cpu = cpu or not torch.cuda.is_available()
    sizes = CPU if cpu else GPU
    chosen = tuple((variants or ("qlora" if quick else "lora16" if cpu else "qlora,lora16")).split(","))
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise click.UsageError(f"--variants: unknown {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    started = time.perf_counter()
    env = environment(cpu)
    date = time.strftime("%Y-%m-%d")
    stem = out / f"gpu-check-{'cpu' if cpu else env['device'].replace(' ', '-')}-{date}"
    out.mkdir(parents=True, exist_ok=True)

    def record(steps: list[Step], finished: bool) -> dict[str, Any]:
        """The JSON record, written (with its page) after every phase: the last one written is the result."""
        result = {
            "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]), "date": date,
            "environment": env, "variants": chosen, "sizes": "CPU (tiny)" if cpu else "GPU",
            "train_flags": list(sizes.train_flags), "seconds": round(time.perf_counter() - started, 1),
            "finished": finished, "passed": finished and all(s.status != "fail" for s in steps),
            "steps": [vars(s) for s in steps],
        }
        write_json(stem.with_suffix(".json"), result)
        write_text(stem.with_suffix(".md"), to_markdown(result))
        return result

    steps = run_check(work.resolve(), sizes, chosen, jobs or (1 if cpu else 6), lambda done: record(done, False))
    result = record(steps, True)
    click.echo(to_markdown(result))
    click.echo(f"wrote {stem}.json and .md")
    sys.exit(0 if result["passed"] else 1)

if __name__ == "__main__":
    main()
