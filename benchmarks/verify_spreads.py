"""How far each export precision moves the logits from the adapter itself: the spreads `verify`'s tolerances come from.

    python benchmarks/verify_spreads.py --run llama-3.1-lora-finetuned/peft     # after the CPU demo run

Two models, every export target `verify` knows and every GGUF type `gguf --types` writes:
- the run given (the embedded SmolLM2 with the demo's trained adapter): real weights, rows 576 wide, so the k-quants
  fall back to other types for most tensors;
- a model of Llama 3.1's architecture, small (2 layers, widths multiples of 256, the real 128,256-token Llama 3.1
  tokenizer and chat template), random weights and a random adapter: every weight takes the k-quant asked for.
Merged models are also checked saved in float32 and float16 besides the default bfloat16.

Writes benchmarks/results/verify-spreads-<device>-<date>.{json,md}: each target's figures, what each k-quant fell back
to, and the limits llama_lora/export/tolerances.py's `derive` makes of them (which TOLERANCES must equal).
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import click

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llama_lora.atomic_files import write_report  # noqa: E402
from llama_lora.export import gguf_quantize, gguf_writer, merge, targets, tolerances  # noqa: E402
from llama_lora.export.gguf_types import GGUF_TYPES  # noqa: E402
from llama_lora.export.verify import verify  # noqa: E402
from llama_lora.use.inference import read_run  # noqa: E402

PROMPTS = ["Why do we have seasons?", "How do vaccines train the immune system?", "What makes a good password?",
           "Explain compound interest with an example.", "Why is the sky blue?", "How does a refrigerator work?",
           "What is the difference between weather and climate?", "How do plants make food?"]


def llama31_shaped_run(folder: Path) -> Path:
    """A run folder whose base has Llama 3.1's architecture at a small size, random weights, and a random adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llama_lora.data.chat_template import ensure_chat_template
    from llama_lora.model.llama3_tokenizer import llama31_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(llama31_tokenizer_dir())
    ensure_chat_template(tokenizer)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=131072,
                         rope_parameters=rope, tie_word_embeddings=False, bos_token_id=128000,
                         eos_token_id=[128001, 128008, 128009], architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    base = folder / "Llama-3.1-shaped"
    LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    run = folder / "run"
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # B starts at zero; a trained adapter's B is small and non-zero
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    peft_model.save_pretrained(run)
    tokenizer.save_pretrained(run)
    (run / "metrics.json").write_text(json.dumps({"status": "completed", "backend": "peft", "model": {
        "name": str(base), "path": str(base)}, "load_in_4bit": False, "dtype": "float32"}))
    return run


def figures_of(run: Path, chosen: list[targets.Target], given: targets.Given, prompts: Path | None) -> list[dict]:
    """verify's figures for each target, its verdict left aside."""
    result = verify(read_run(run), chosen, given, prompts, count=8, max_new_tokens=32, say=click.echo)
    return [{"target": o.target, "precision": o.precision, "figures": o.figures, "status_at_the_time": o.status}
            for o in result.outcomes]


def model_spreads(run: Path, work: Path, prompts: Path | None) -> list[dict]:
    """Every target, plus the merged model saved in float32 and float16."""
    everything = [t for t in targets.TARGETS.values() if t.kind == "logits"]
    rows = figures_of(run, everything, targets.Given(), prompts)
    for dtype in ("float32", "float16"):
        merged = work / f"merged-{dtype}"
        merge.merge(read_run(run), merged, dtype)
        rows += figures_of(run, [targets.TARGETS["merged"]], targets.Given(merged=merged), prompts)
    return rows


def fallbacks(model_dir: Path, work: Path) -> dict[str, dict[str, Any]]:
    """What llama.cpp's quantizer did with each k-quant: the weights that fell back, and the file's size."""
    f16 = gguf_writer.export_model(model_dir, work, "f16", "spread")
    found = {"f16": {"mb": round(f16.stat().st_size / 1e6, 1)}}
    for gguf_type in GGUF_TYPES.values():
        if gguf_type.by_llama_cpp:
            result = gguf_quantize.quantize(f16, work / f"{gguf_type.name}.gguf", gguf_type.file_type)
            found[gguf_type.name] = {"mb": round(result.path.stat().st_size / 1e6, 1),
                                     "fell_back": result.fallback_summary() or "none"}
    return found


def derived(models: dict[str, dict]) -> dict[str, dict]:
    """tolerances.derive over both models' figures, per precision."""
    by_precision: dict[str, list[dict]] = {}
    for model in models.values():
        for row in model["targets"]:
            by_precision.setdefault(row["precision"], []).append(row["figures"])
    return {p: vars(tolerances.derive(p, spreads)) for p, spreads in sorted(by_precision.items())}


def markdown(record: dict) -> str:
    lines = [f"# Export spreads against the adapter: CPU, {record['date']}", "",
             f"Command: `{record['command']}`", "",
             "Figures as `use_adapter.py verify` computes them (llama_lora/export/logit_agreement.py), every position "
             "of 8 prompts and the answers after them; the reference is the adapter on its base in float32.", ""]
    for name, model in record["models"].items():
        lines += [f"## {name}", "", model["about"], "",
                  "| target | precision | mean abs diff | relative | max abs diff | top-1 | effect kept |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| `{r['target']}` | {r['precision']} | {r['figures']['mean_abs_diff']:.4g} | "
                  f"{r['figures']['mean_rel_diff']:.3%} | {r['figures']['max_abs_diff']:.3g} | "
                  f"{r['figures']['top1_agreement']:.1%} | {r['figures']['effect_kept']:.4f} |" for r in model["targets"]]
        lines += ["", "| GGUF type | size MB | weights llama.cpp stored in another type |", "|---|---|---|"]
        lines += [f"| {t} | {v['mb']} | {v.get('fell_back', '')} |" for t, v in model["gguf_files"].items()]
        lines.append("")
    lines += ["## Limits derived (tolerances.derive: MARGIN x the worst spread of both models, with floors)", "",
              "| precision | mean rel diff at most | top-1 at least | effect kept within 1 +/- |", "|---|---|---|---|"]
    lines += [f"| {p} | {t['mean_rel_diff']:.3%} | {t['top1_agreement']:.1%} | {t['effect_kept']:g} |"
              for p, t in record["tolerances"].items()]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--run", "run", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=REPO / "llama-3.1-lora-finetuned" / "peft", show_default=True,
              help="A trained run of the embedded model (the CPU demo's).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Record stem (default benchmarks/results/verify-spreads-cpu-<date>).")
def main(run: Path, out: Path | None) -> None:
    out = out or REPO / "benchmarks" / "results" / f"verify-spreads-cpu-{date.today()}"
    models: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="verify-spreads-") as tmp:
        work = Path(tmp)
        demo_base = Path(read_run(run).base)
        (work / "demo").mkdir()
        models["SmolLM2-135M-Instruct, the demo's trained adapter"] = {
            "about": f"Run `{run.resolve().relative_to(REPO) if run.resolve().is_relative_to(REPO) else run}`: "
                     "8 held-out prompts of its eval split.",
            "targets": model_spreads(run, work / "demo", None),
            "gguf_files": fallbacks(demo_base, work / "demo")}
        shaped = llama31_shaped_run(work / "llama")
        prompts = work / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n")
        models["Llama-3.1-shaped, random weights and adapter"] = {
            "about": "hidden 512, intermediate 1536, 2 layers, 8/2 heads, Llama 3.1 rope scaling, untied output, the "
                     "Llama 3.1 tokenizer and template; LoRA r 16, alpha 32, every linear layer, B ~ N(0, 0.02). "
                     "Prompts: " + "; ".join(PROMPTS),
            "targets": model_spreads(shaped, work / "llama", prompts),
            "gguf_files": fallbacks(shaped.parent / "Llama-3.1-shaped", work / "llama")}
    record = {"date": str(date.today()), "command": shlex.join(["python", "benchmarks/verify_spreads.py",
                                                                 *sys.argv[1:]]),
              "models": models, "tolerances": derived(models)}
    write_report(out, record, markdown(record))
    click.echo(f"written: {out}.json, {out}.md")


if __name__ == "__main__":
    main()
