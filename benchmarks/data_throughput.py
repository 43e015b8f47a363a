"""Formatting + tokenization throughput of the data path on synthetic rows (a benchmark, not a test).

    python benchmarks/data_throughput.py --rows 100000 --workers 1,2 --out benchmarks/results/data_throughput.md
    python benchmarks/data_throughput.py --cache --rows 1000000 --out benchmarks/results/data_cache.md

With `--cache`: the tokenized-data cache at scale. A fresh process runs `data.prepare` exactly as a training run
does (cold: it builds the Arrow cache), then another fresh process finds the cache and goes as far as the
trainer's first step on a tiny random Llama model with the Llama 3 vocabulary (no weights loaded): time from
process start to that step, of which verifying the entry (each table's size and xxh3-128 hash), peak RSS of each
process, and the private memory the data adds to a process.

Writes `--rows` synthetic multi-turn conversations (OpenAI messages format) to a temporary JSONL file, then
times each stage of `llama_lora.data.prepare` exactly as a training run uses it: read the file, format the rows,
render + tokenize + mask (once per worker count), apply the over-length policy. Tokenizer: the real Llama 3
tokenizer (with the Llama 3.1 chat template this project supplies) and optionally the embedded SmolLM2's.
"""

from __future__ import annotations

import time

PROCESS_STARTED = time.time()  # the warm run's clock starts before any import

import json
import os
import platform
import random
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_lora.data.formats import DEFAULT_ROLE_MAP, to_examples
from llama_lora.data.prepare import apply_length_policy, tokenize_examples
from llama_lora.data.sources import read_file

WORDS = ("the", "model", "learns", "a", "step", "at", "a", "time", "and", "checks", "each", "answer", "before", "it", "moves", "on", "to", "the", "next", "idea", "while", "numbers", "fractions", "energy", "cells", "rivers", "grammar", "history", "and", "code", "all", "appear", "in", "the", "lessons")


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Conversations of 1-3 exchanges, 10-60 word questions and 40-200 word answers, with a system prompt on a third."""
    return list(iter_synthetic_rows(n, seed))


def iter_synthetic_rows(n: int, seed: int = 0, fast: bool = False):
    """synthetic_rows one at a time (a million of them do not fit in memory as Python objects). `fast` draws each
    message's words in one call: the same distribution, another random stream, several times quicker."""
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        count = rng.randint(lo, hi)
        drawn = rng.choices(WORDS, k=count) if fast else (rng.choice(WORDS) for _ in range(count))
        return " ".join(drawn).capitalize() + "."

    for _ in range(n):
        messages = [{"role": "system", "content": words(5, 15)}] if rng.random() < 1 / 3 else []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": words(10, 60)}, {"role": "assistant", "content": words(40, 200)}]
        yield {"messages": messages}


def llama3_tokenizer():
    from transformers import AutoTokenizer

    from llama_lora.data.chat_template import ensure_chat_template
    from llama_lora.model.llama3_tokenizer import llama31_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(llama31_tokenizer_dir())
    ensure_chat_template(tokenizer)
    return tokenizer


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from llama_lora.model.assets import smollm2_dir

    return AutoTokenizer.from_pretrained(smollm2_dir())


def timed(fn, *args):
    """fn(*args) and the seconds it took."""
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


@click.command()
@click.option("--cache", is_flag=True, help="Benchmark the tokenized-data cache (cold build, warm start) instead.")
@click.option("--phase", type=click.Choice(["cold", "warm"]), hidden=True, help="One measured process of --cache.")
@click.option("--data", type=click.Path(path_type=Path), hidden=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), hidden=True)
@click.option("--rows", default=100_000, show_default=True, help="Synthetic conversations to generate.")
@click.option("--workers", default="1,2", show_default=True, help="Comma-separated worker counts to time.")
@click.option("--tokenizers", default="llama3", show_default=True, help="Comma-separated: llama3, smollm2.")
@click.option("--max-seq-length", default=2048, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Also write the results as markdown here.")
def main(cache: bool, phase: str | None, data: Path | None, cache_dir: Path | None, rows: int, workers: str,
         tokenizers: str, max_seq_length: int, out: Path | None) -> None:
    if phase:
        print(json.dumps(measure_phase(phase, data, cache_dir, max_seq_length)))
        return
    if cache:
        cache_benchmark(rows, max_seq_length, out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(rows)))
        raw, read_s = timed(read_file, path)
        examples, format_s = timed(to_examples, raw, "messages", DEFAULT_ROLE_MAP)  # rows are read lazily from the file
    results = []
    for name in tokenizers.split(","):
        tokenizer = {"llama3": llama3_tokenizer, "smollm2": smollm2_tokenizer}[name]()
        for n in (int(w) for w in workers.split(",")):
            tokenized, tokenize_s = timed(tokenize_examples, tokenizer, examples, "assistant", n)
            _, policy_s = timed(apply_length_policy, tokenized, max_seq_length, "drop", str(path))
            tokens = sum(row["length"] for row in tokenized)
            total = read_s + format_s + tokenize_s + policy_s
            results.append({
                "tokenizer": name, "workers": n, "rows": rows, "tokens": tokens,
                "read_s": read_s, "format_s": format_s, "tokenize_s": tokenize_s, "policy_s": policy_s,
                "total_s": total, "rows_per_s": rows / total, "tokens_per_s": tokens / total,
                "tokenize_rows_per_s": rows / tokenize_s,
            })
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results[-1].items()}))
    table = report(results, rows, workers, tokenizers, max_seq_length)
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)


def report(results: list[dict], rows: int, workers: str, tokenizers: str, max_seq_length: int) -> str:
    command = (f"python benchmarks/data_throughput.py --rows {rows} --workers {workers} --tokenizers {tokenizers}"
               f" --max-seq-length {max_seq_length}")
    lines = [
        "# Data path throughput", "",
        f"Command: `{command}`  ",
        (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"), "",
        ("| tokenizer | workers | read s | format s | render+tokenize+mask s | length policy s | total s "
        "| rows/s | tokens/s |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['tokenizer']} | {r['workers']} | {r['read_s']:.1f} | {r['format_s']:.1f} | "
                     f"{r['tokenize_s']:.1f} | {r['policy_s']:.1f} | {r['total_s']:.1f} | {r['rows_per_s']:,.0f} | "
                     f"{r['tokens_per_s']:,.0f} |")
    lines += ["", f"{rows:,} rows, {results[0]['tokens']:,} tokens ({results[0]['tokenizer']})."]
    return "\n".join(lines) + "\n"


def private_mb() -> float:
    """This process's private memory (not shared with other processes, e.g. a memory-mapped table's pages), MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def measure_phase(phase: str, data: Path, cache_dir: Path, max_seq_length: int) -> dict:
    """One fresh process: prepare the data as a run does (cold: builds the cache); warm: go on to the first step."""
    from llama_lora.data.audit import build_audit
    from llama_lora.data.prepare import prepare
    from llama_lora.options.config import TrainConfig

    tokenizer = llama3_tokenizer()
    cfg = TrainConfig(dataset=str(data), model="llama3-tokenizer", data_cache=str(cache_dir),
                      max_seq_length=max_seq_length, max_steps=1, batch_size=1, grad_accum=1, save_steps=0,
                      samples=0, dtype="float32", batching="padded", learning_rate=2e-4, lora_alpha=32,
                      load_in_4bit=False)  # every "auto" field set: resolve() is skipped here
    verifying = timed_verification()
    before = private_mb()
    ready_to_prepare_s = time.time() - PROCESS_STARTED  # interpreter, imports, tokenizer
    started = time.perf_counter()
    prepared = prepare(cfg, tokenizer)
    audit = build_audit(prepared, cfg.max_seq_length, cfg.overlength, cfg.loss_on, "Llama 3.1 (supplied)")
    result = {"phase": phase, "built": prepared.cache["built"], "prepare_s": time.perf_counter() - started,
              "ready_to_prepare_s": ready_to_prepare_s,
              "rows_read": sum(s["rows_read"] for s in audit["splits"].values()),
              "tokens": sum(s["tokens"] for s in audit["splits"].values()), "hash": audit["hash"][:16],
              "table_mb": sum(f.stat().st_size for f in Path(prepared.cache["path"]).glob("*.arrow")) / 1e6,
              "data_private_mb": private_mb() - before, "verify_s": sum(verifying)}
    if phase == "warm":
        result["to_first_step_s"] = first_step_seconds(cfg, tokenizer, prepared)
        result["private_mb_at_first_step"] = private_mb()
    result["peak_rss_gb"] = peak_rss_gb()
    return result


def timed_verification() -> list[float]:
    """Time every verification of a cache entry `prepare` makes (the list fills as it runs)."""
    from llama_lora.data import token_cache

    seconds: list[float] = []
    verify = token_cache.problem

    def timed(entry: Path) -> str | None:
        started = time.perf_counter()
        try:
            return verify(entry)
        finally:
            seconds.append(time.perf_counter() - started)

    token_cache.problem = timed
    return seconds


def first_step_seconds(cfg, tokenizer, prepared) -> float:
    """Seconds from process start to the trainer's first optimizer step, on a tiny random Llama (Llama 3 vocab)."""
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

    from llama_lora.train.trainer import build_sft_config, make_trainer, to_dataset

    class FirstStep(TrainerCallback):
        at = None

        def on_step_begin(self, args, state, control, **kwargs):
            FirstStep.at = FirstStep.at or time.time()

    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer)))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(model, tokenizer, build_sft_config(cfg, Path(tmp)), to_dataset(prepared.train.rows),
                               None, [FirstStep()], own_cpu_loss=False)
        trainer.train()
    return FirstStep.at - PROCESS_STARTED


def run_phase(phase: str, data: Path, cache_dir: Path, max_seq_length: int) -> dict:
    import subprocess

    command = [sys.executable, __file__, "--phase", phase, "--data", str(data), "--cache-dir", str(cache_dir),
               "--max-seq-length", str(max_seq_length)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-4000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def cache_benchmark(rows: int, max_seq_length: int, out: Path | None) -> None:
    """Cold build then warm start, each in a fresh process, on `rows` synthetic conversations."""
    loads = [Path("/proc/loadavg").read_text().split()[:3]]
    work = Path(__file__).parent / ".work"  # on disk, git-ignored: /tmp may be memory
    work.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        data = Path(tmp) / "synthetic.jsonl"
        with data.open("w") as handle:
            for row in iter_synthetic_rows(rows, fast=True):
                handle.write(json.dumps(row) + "\n")
        file_mb = data.stat().st_size / 1e6
        cold = run_phase("cold", data, Path(tmp) / "cache", max_seq_length)
        print(json.dumps(cold))
        warm = run_phase("warm", data, Path(tmp) / "cache", max_seq_length)
        print(json.dumps(warm))
    loads.append(Path("/proc/loadavg").read_text().split()[:3])
    command = f"python benchmarks/data_throughput.py --cache --rows {rows} --max-seq-length {max_seq_length}"
    lines = [
        "# Tokenized-data cache at scale", "",
        f"Command: `{command}`  ",
        (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}; load average (1/5/15 min) "
        f"before {' / '.join(loads[0])}, after {' / '.join(loads[1])}"), "",
        (f"{rows:,} synthetic conversations ({file_mb:,.0f} MB of JSON lines), {cold['tokens']:,} tokens with the "
        f"Llama 3 tokenizer and the supplied Llama 3.1 template; 10% held out for eval; data hash {cold['hash']}."), "",
        "| process | what it did | seconds | rows/s | peak RSS GB | private MB the data added | table MB |",
        "|---|---|---|---|---|---|---|",
        (f"| cold | read, format, tokenize, mask, write the Arrow cache (`data.prepare`) | {cold['prepare_s']:.1f} "
        f"| {cold['rows_read'] / cold['prepare_s']:,.0f} | {cold['peak_rss_gb']:.2f} | {cold['data_private_mb']:,.0f} "
        f"| {cold['table_mb']:,.0f} |"),
        (f"| warm | find the cache, verify it, memory-map it, audit (`data.prepare`) | {warm['prepare_s']:.1f} | - "
        f"| {warm['peak_rss_gb']:.2f} | {warm['data_private_mb']:,.0f} | {warm['table_mb']:,.0f} |"),
        (f"| warm | of which verifying the entry (sizes and xxh3-128 hashes of {warm['table_mb']:,.0f} MB of tables) "
         f"| {warm['verify_s']:.2f} | - | (same process) | - | - |"),
        (f"| warm | process start to the trainer's first step (tiny random Llama, Llama 3 vocabulary); of which "
         f"interpreter, imports and tokenizer before `data.prepare`: {warm['ready_to_prepare_s']:.1f} s "
         f"| {warm['to_first_step_s']:.1f} | - | (same process) | - | - |"),
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if out:
        out.write_text(table)


if __name__ == "__main__":
    main()
