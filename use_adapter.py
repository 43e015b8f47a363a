"""Use a trained adapter: generate, merge, swap adapters on one base, check portability.

    python use_adapter.py generate llama-3.1-lora-finetuned/peft -p "Why do we have seasons?"
    python use_adapter.py chat llama-3.1-lora-finetuned/peft            # multi-turn, in the terminal
    python use_adapter.py merge llama-3.1-lora-finetuned/peft merged/peft
    python use_adapter.py swap llama-3.1-lora-finetuned/peft llama-3.1-lora-finetuned/unsloth -p "Why?"
    python use_adapter.py check llama-3.1-lora-finetuned/unsloth --unsloth
    python use_adapter.py gguf llama-3.1-lora-finetuned/peft --out gguf/      # llama.cpp / Ollama files
    python use_adapter.py verify llama-3.1-lora-finetuned/peft --gguf gguf/   # every export against the adapter
    python use_adapter.py eval llama-3.1-lora-finetuned/peft --tasks everyday_knowledge   # lm-eval, base vs tuned

Every command takes a run folder of either backend. Models load with plain transformers + PEFT (never Unsloth,
which patches libraries on import; `check --unsloth` runs Unsloth's loader in a process of its own).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import click

from llama_lora import quiet
from llama_lora.errors import UsageError
from llama_lora.options import remote_code
from llama_lora.options.config import DTYPES

REPO = Path(__file__).resolve().parent
RUN = click.argument("run", type=click.Path(path_type=Path))
BASE = click.option("--base-model", default=None, help="Base model folder or hub id (default: the one the run "
                                                        "records in metrics.json / config.yaml).")


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Our UsageError (bad folder, file or option) becomes click's: message, usage line, exit status 2."""
    try:
        yield
    except UsageError as err:
        raise click.UsageError(str(err)) from err


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Use a trained adapter (a run folder of either backend): generate, chat, merge, swap, check, gguf, verify,
    eval."""
    quiet.install()  # before the subcommand imports transformers


def generation_options(command: Any) -> Any:
    """The options `generate` and `chat` share: system prompt, decoding, streaming, adapter or not, base model."""
    for option in reversed([
        click.option("--system", default=None, help="System prompt (default: the chat template's own)."),
        click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=1)),
        click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
                     help="0: greedy; above 0: sample."),
        click.option("--top-p", default=0.9, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True),
                     help="Nucleus sampling (with --temperature > 0)."),
        click.option("--seed", default=0, show_default=True, help="Sampling seed."),
        click.option("--stream/--no-stream", default=True, show_default=True, help="Print tokens as they come."),
        click.option("--no-adapter", is_flag=True, help="Answer with the base model alone (adapter disabled)."),
        BASE,
        remote_code.option,
    ]):
        command = option(command)
    return command


@cli.command()
@RUN
@click.option("-p", "--prompt", "prompts", multiple=True, help="A user message (repeat for several).")
@click.option("--prompts-file", type=click.Path(path_type=Path),
              help=".txt (one prompt a line) or .jsonl (a string, {\"prompt\": ...} or {\"messages\": [...]} a line).")
@generation_options
def generate(run: Path, prompts: tuple[str, ...], prompts_file: Path | None, system: str | None,
             max_new_tokens: int, temperature: float, top_p: float, seed: int, stream: bool, no_adapter: bool,
             base_model: str | None, trust_remote_code: bool) -> None:
    """Answer prompts with the run's base model + adapter, using its chat template."""
    from llama_lora.use import inference

    with usage_errors():
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        if prompts_file:
            conversations += inference.read_prompts(prompts_file)
        if not conversations:
            raise UsageError("nothing to answer: give --prompt TEXT or --prompts-file FILE")
        info = inference.read_run(run, base_model, trust_remote_code)
    from transformers import TextStreamer, set_seed

    model, tokenizer = inference.load_tuned(info)
    sampling = inference.Sampling(max_new_tokens, temperature, top_p)
    for conversation in conversations:
        set_seed(seed)  # each prompt samples the same way whatever came before it
        click.echo(f"\n>>> {conversation[-1]['content']}")
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
        with inference.active(model, None if no_adapter else "default"):
            answer = inference.generate(model, tokenizer,
                                        [inference.chat_ids(tokenizer, inference.with_system(conversation, system))],
                                        sampling, streamer)[0]
        if not stream:
            click.echo(answer.text)
        ending = "ended its turn" if answer.stopped else "cut off at --max-new-tokens"
        click.echo(f"[{answer.tokens} tokens, {ending}]")


@cli.command()
@RUN
@generation_options
def chat(run: Path, system: str | None, max_new_tokens: int, temperature: float, top_p: float, seed: int,
         stream: bool, no_adapter: bool, base_model: str | None, trust_remote_code: bool) -> None:
    """Talk with the run's model, turn after turn, in its chat template (the history is kept).

    Type a message and press Enter; /reset forgets the conversation, /system TEXT sets the system prompt,
    /exit (or Ctrl-D) ends. Works with piped input too.
    """
    from llama_lora.use import inference
    from llama_lora.use.chat import HELP, Conversation, command

    with usage_errors():
        info = inference.read_run(run, base_model, trust_remote_code)
    from transformers import TextStreamer, set_seed

    model, tokenizer = inference.load_tuned(info)
    sampling = inference.Sampling(max_new_tokens, temperature, top_p)
    conversation = Conversation(system)
    set_seed(seed)  # once: a sampled conversation replays the same way with the same seed and inputs
    click.echo(f"Chatting with {run} ({'base model, adapter disabled' if no_adapter else 'base + adapter'}). {HELP}")
    while True:
        try:
            line = input("\n>>> ").strip()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C: a normal way to leave
            click.echo()
            break
        if not line:
            continue
        if not sys.stdin.isatty():
            click.echo(line)  # piped input is not echoed by a terminal: show it, so the transcript reads as a chat
        if line.startswith("/"):
            reply = command(conversation, line)
            if reply is None:
                break
            click.echo(reply)
            continue
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
        with inference.active(model, None if no_adapter else "default"):
            answer = inference.generate(model, tokenizer,
                                        [inference.chat_ids(tokenizer, conversation.messages(line))],
                                        sampling, streamer)[0]
        if not stream:
            click.echo(answer.text)
        if not answer.stopped:
            click.echo(f"[cut off at --max-new-tokens {max_new_tokens}]")
        conversation.add(line, answer.text)


@cli.command()
@RUN
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--dtype", type=click.Choice(DTYPES), default="bfloat16",
              show_default=True, help="Weights of the merged model.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@BASE
@remote_code.option
def merge(run: Path, out: Path, dtype: str, overwrite: bool, base_model: str | None, trust_remote_code: bool) -> None:
    """Merge the adapter into its base and save a standalone model (safetensors + tokenizer) to OUT.

    A QLoRA run's base is dequantized from NF4 first, so the adapter lands on the weights it trained with.
    """
    from llama_lora.export import merge as merging
    from llama_lora.use import inference

    with usage_errors():
        info = inference.read_run(run, base_model, trust_remote_code)
        merging.check_destination(out, overwrite)
        report = merging.merge(info, out, dtype, overwrite)
    click.echo(f"Merged {run} into {'the NF4-dequantized' if info.load_in_4bit else 'the'} base and saved {dtype} "
               f"weights, tokenizer and chat template to {out}/")
    click.echo(f"  largest |logit difference| vs {report['compared_with']}: {report['max_abs_diff']:.3g} "
               f"(logits reach {report['max_abs_logit']:.1f}) over {report['prompts']} prompts")
    click.echo(f"  same top token at {report['top1_agreement']:.1%} of positions; report in {out / merging.REPORT}")


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-p", "--prompt", default="Why do we have seasons?", show_default=True)
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@remote_code.option
def swap(runs: tuple[Path, ...], prompt: str, max_new_tokens: int, trust_remote_code: bool) -> None:
    """Load several adapters onto one base model and answer with each in turn, then with none.

    The base loads once; switching is peft's set_adapter / disable_adapter, no weights reload.
    """
    from llama_lora.use import inference

    with usage_errors():
        infos = [inference.read_run(run, trust_remote_code=trust_remote_code) for run in runs]
        if len({info.base for info in infos}) > 1:
            raise UsageError("adapters can share a base only if they were trained on the same one: "
                             + ", ".join(f"{i.folder} -> {i.base}" for i in infos))
        names = _adapter_names(runs)
    model = inference.load_adapters(infos[0], dict(zip(names, runs)))
    tokenizer = inference.load_tokenizer(runs[0], trust_remote_code)
    weight = model.get_base_model().get_input_embeddings().weight
    where = weight.data_ptr()
    prompt_ids = inference.chat_ids(tokenizer, [{"role": "user", "content": prompt}])
    click.echo(f">>> {prompt}")
    for name in [*names, None]:
        started = time.perf_counter()
        with inference.active(model, name):
            switched = time.perf_counter() - started
            answer = inference.generate(model, tokenizer, [prompt_ids], inference.Sampling(max_new_tokens))[0]
        click.echo(f"\n[{name or 'base model, adapters disabled'}] (switched in {switched * 1000:.1f} ms)")
        click.echo(answer.text)
    same = weight.data_ptr() == where and model.get_base_model().get_input_embeddings().weight is weight
    click.echo(f"\nBase weights loaded once and shared by all {len(names)} adapters: {'yes' if same else 'NO'}")


def _adapter_names(runs: tuple[Path, ...]) -> list[str]:
    """Readable, distinct adapter names: the run folders' names, numbered when they repeat."""
    names = [run.resolve().name.replace(".", "_") for run in runs]
    return names if len(set(names)) == len(names) else [f"{name}_{i}" for i, name in enumerate(names, 1)]


@cli.command()
@RUN
@click.option("--unsloth", "with_unsloth", is_flag=True,
              help="Also load the adapter with Unsloth's loader (own process) and compare logits with plain PEFT.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="Compute dtype for the logit comparison (float32 separates loaders from rounding).")
@BASE
@remote_code.option
def check(run: Path, with_unsloth: bool, dtype: str, base_model: str | None, trust_remote_code: bool) -> None:
    """Portability: will the adapter serve in vLLM, does plain PEFT load it, does Unsloth compute the same?"""
    from llama_lora.use import adapter_checks, inference

    with usage_errors():
        info = inference.read_run(run, base_model, trust_remote_code)
    warnings = adapter_checks.vllm_warnings(run)
    click.echo("vLLM: " + ("no problem found (LoRA A/B weights only, rank within the default limit)"
                           if not warnings else f"{len(warnings)} problem(s)"))
    for warning in warnings:
        click.echo(f"  warning: {warning}")
    if info.load_in_4bit:
        click.echo("  note: a QLoRA adapter serves on the 16-bit base in vLLM; outputs differ slightly from NF4 "
                   "training (use_adapter.py merge shows by how much)")
    model, tokenizer = inference.load_tuned(info, dtype=dtype)
    prompts = adapter_checks.prompt_batch(tokenizer)
    tuned = adapter_checks.logits(model, prompts)
    with model.disable_adapter():
        base = adapter_checks.logits(model, prompts)
    effect = adapter_checks.compare_logits(tuned, base)
    click.echo(f"plain PEFT: loads; the adapter moves the logits by up to {effect['max_abs_diff']:.3g} "
               f"(top token changes at {1 - effect['top1_agreement']:.1%} of positions)")
    if not with_unsloth:
        return
    other = unsloth_logits(run, dtype, trust_remote_code)
    same = adapter_checks.compare_logits(tuned, other)
    verdict = "same" if adapter_checks.within_tolerance(same) else "DIFFERENT"
    click.echo(f"Unsloth loader: {verdict}: largest |logit difference| vs plain PEFT {same['max_abs_diff']:.3g} "
               f"(tolerance {adapter_checks.LOGIT_TOLERANCE:g} x {same['max_abs_logit']:.1f}), same top token at "
               f"{same['top1_agreement']:.1%} of positions")
    if verdict != "same":
        sys.exit(1)


def unsloth_logits(run: Path, dtype: str, trust_remote_code: bool = False) -> list[Any]:
    """Logits of the run's adapter loaded by Unsloth, computed in a process of its own (which gets the flag)."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.safetensors"
        flags = [remote_code.FLAG] if trust_remote_code else []
        result = subprocess.run([sys.executable, str(REPO / "scripts/unsloth_logits.py"), str(run), str(out),
                                 "--dtype", dtype, *flags], capture_output=True, text=True)
        if result.returncode != 0:
            raise click.ClickException(f"Unsloth could not load {run}:\n{result.stderr[-2000:]}")
        tensors = load_file(str(out))
    return [tensors[f"prompt_{i}"] for i in range(len(tensors))]


@cli.command()
@RUN
@click.option("--gguf", "gguf_folders", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder `gguf` wrote (from the run, or from a merged model); repeat for both.")
@click.option("--merged", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The folder `merge` wrote.")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path),
              help="Compare on these prompts (as generate's --prompts-file) instead of the run's eval split.")
@click.option("--count", default=8, show_default=True, type=click.IntRange(min=1),
              help="Held-out prompts taken from the eval split, spread over it.")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(min=1),
              help="Length of the greedy continuations shown side by side.")
@click.option("--targets", "target_names", default=None,
              help="Comma-separated targets to check (default: every default target, plus any found in the folders "
                   "given); see docs/using-adapters.md for the list.")
@BASE
@remote_code.option
def verify(run: Path, gguf_folders: tuple[Path, ...], merged: Path | None, prompts_file: Path | None, count: int,
           max_new_tokens: int, target_names: str | None, base_model: str | None, trust_remote_code: bool) -> None:
    """Check each export of RUN against the adapter itself: merged model, GGUF + LoRA, merged GGUF f16/q8_0/q4_k_m in
    llama.cpp, and the Ollama Modelfile's template. Exports not given are built in a temporary folder.

    Writes verify.md and verify.json into RUN; exits 1 when a target fails.
    """
    from llama_lora.export import targets, verify_report
    from llama_lora.export.verify import verify as check_exports
    from llama_lora.run import files
    from llama_lora.use import inference

    given = targets.Given(merged, gguf_folders)
    with usage_errors():
        info = inference.read_run(run, base_model, trust_remote_code)
        chosen = targets.chosen(target_names, given)
        result = check_exports(info, chosen, given, prompts_file, count, max_new_tokens, say=click.echo)
    verify_report.write(run, result)
    click.echo(f"{'PASSED' if result.passed else 'FAILED'}: report in {run / files.VERIFY_REPORT}")
    if not result.passed:
        sys.exit(1)


@cli.command(name="eval")
@RUN
@click.option("--tasks", default="everyday_knowledge", show_default=True,
              help="Comma-separated lm-eval task names (mmlu, hellaswag, ...; their data comes from the hub or the "
                   "datasets cache) or task YAML files; the bundled everyday_knowledge runs offline.")
@click.option("--num-fewshot", type=click.IntRange(min=0), default=None, help="Examples shown before each question "
              "(default: each task's own).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Score only the first N examples of each task: quicker, with larger standard errors.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", default=0, show_default=True, help="lm-eval's seeds (few-shot sampling), the same for both.")
@click.option("--chat-template", is_flag=True, help="Wrap each question in the run's chat template.")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Compute dtype (default: the run's).")
@BASE
@remote_code.option
def eval_command(run: Path, tasks: str, num_fewshot: int | None, limit: int | None, batch_size: int, seed: int,
                 chat_template: bool, dtype: str | None, base_model: str | None, trust_remote_code: bool) -> None:
    """Score the run's model with and without its adapter through lm-evaluation-harness; eval.md / eval.json.

    Same model load, tasks, settings and seeds for both passes; the report gives each task's change and its
    standard error. Task data loads before the model, so a bad task name fails fast.
    """
    from llama_lora.use import evaluate, inference

    with usage_errors():
        info = inference.read_run(run, base_model, trust_remote_code)
        settings = evaluate.Settings(evaluate.parse_tasks(tasks), num_fewshot, limit, batch_size, seed, chat_template)
        loaded = evaluate.load_tasks(settings.tasks, num_fewshot)
    model, tokenizer = inference.load_tuned(info, dtype=dtype)
    base, tuned, seconds = evaluate.base_and_tuned(model, tokenizer, loaded, settings, click.echo)
    record = evaluate.build_record(run, info, settings, base, tuned, seconds)
    written = evaluate.write_report(run, record)
    click.echo("")
    for row in record["rows"]:
        stderr = f" ± {row['delta_stderr']:.4f}" if row["delta_stderr"] is not None else ""
        click.echo(f"  {row['task']} {row['metric']}: {row['base']:.4f} -> {row['tuned']:.4f} "
                   f"({row['delta']:+.4f}{stderr}): {row['reading']}")
    click.echo(f"Report: {written[1]} (and {written[0].name})")


# GGUF export for llama.cpp / Ollama works from files alone; its command lives beside its logic
from llama_lora.export.gguf import export_gguf  # noqa: E402

cli.add_command(export_gguf, name="gguf")

if __name__ == "__main__":
    cli()
