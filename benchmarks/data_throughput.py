"""Formatting + tokenization throughput of the data path on synthetic rows (a benchmark, not a test).

    python benchmarks/data_throughput.py --rows 100000 --workers 1,2 --out benchmarks/results/data_throughput.md

Writes `--rows` synthetic multi-turn conversations (OpenAI messages format) to a temporary JSONL file, then
times each stage of `llama_lora.data` exactly as a training run uses it: read the file, format the rows,
render + tokenize + mask (once per worker count), apply the over-length policy. Tokenizer: the real Llama 3
tokenizer (with the Llama 3.1 chat template this project supplies) and optionally the embedded SmolLM2's.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_lora.data import apply_length_policy, tokenize_examples  # noqa: E402
from llama_lora.formats import DEFAULT_ROLE_MAP, to_examples  # noqa: E402
from llama_lora.sources import read_file  # noqa: E402

WORDS = ("the model learns a step at a time and checks each answer before it moves on to the next idea "
         "while numbers fractions energy cells rivers grammar history and code all appear in the lessons").split()


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Conversations of 1-3 exchanges, 10-60 word questions and 40-200 word answers, with a system prompt on a third."""
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    rows = []
    for _ in range(n):
        messages = [{"role": "system", "content": words(5, 15)}] if rng.random() < 1 / 3 else []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": words(10, 60)}, {"role": "assistant", "content": words(40, 200)}]
        rows.append({"messages": messages})
    return rows


def llama3_tokenizer():
    from transformers import AutoTokenizer

    from llama_lora.chat_template import ensure_chat_template
    from llama_lora.llama3_tokenizer import llama31_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(llama31_tokenizer_dir())
    ensure_chat_template(tokenizer)
    return tokenizer


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from llama_lora.assets import smollm2_dir

    return AutoTokenizer.from_pretrained(smollm2_dir())


def timed(fn, *args):
    """fn(*args) and the seconds it took."""
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


@click.command()
@click.option("--rows", default=100_000, show_default=True, help="Synthetic conversations to generate.")
@click.option("--workers", default="1,2", show_default=True, help="Comma-separated worker counts to time.")
@click.option("--tokenizers", default="llama3", show_default=True, help="Comma-separated: llama3, smollm2.")
@click.option("--max-seq-length", default=2048, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Also write the results as markdown here.")
def main(rows: int, workers: str, tokenizers: str, max_seq_length: int, out: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(rows)))
        raw, read_s = timed(read_file, path)
    examples, format_s = timed(to_examples, raw, "messages", DEFAULT_ROLE_MAP)
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
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}", "",
        "| tokenizer | workers | read s | format s | render+tokenize+mask s | length policy s | total s "
        "| rows/s | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['tokenizer']} | {r['workers']} | {r['read_s']:.1f} | {r['format_s']:.1f} | "
                     f"{r['tokenize_s']:.1f} | {r['policy_s']:.1f} | {r['total_s']:.1f} | {r['rows_per_s']:,.0f} | "
                     f"{r['tokens_per_s']:,.0f} |")
    lines += ["", f"{rows:,} rows, {results[0]['tokens']:,} tokens ({results[0]['tokenizer']})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
