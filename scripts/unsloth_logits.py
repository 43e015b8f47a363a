"""Load a run folder's adapter through Unsloth's own loader and save its logits on the fixed check prompts.

    python scripts/unsloth_logits.py RUN_FOLDER OUT.safetensors [--dtype float32]

`use_adapter.py check --unsloth` runs this in its own process (importing Unsloth patches transformers, TRL and
PEFT, so it must never share a process with the plain-PEFT side it is compared with).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for llama_lora

from llama_lora.options import remote_code  # noqa: E402 (light: no torch)
from llama_lora.options.config import DTYPES  # noqa: E402


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="Compute dtype (default: the run's).")
@remote_code.option
def main(run: Path, out: Path, dtype: str | None, trust_remote_code: bool) -> None:
    """Logits of RUN's base + adapter as FastLanguageModel loads them, written to OUT (safetensors)."""
    from llama_lora import quiet

    quiet.install()
    import torch
    import unsloth  # noqa: F401  (first: it patches transformers and PEFT)
    from safetensors.torch import save_file
    from unsloth import FastLanguageModel

    from llama_lora.errors import UsageError
    from llama_lora.use.adapter_checks import logits, prompt_batch
    from llama_lora.use.inference import load_tokenizer, read_run

    try:
        info = read_run(run, trust_remote_code=trust_remote_code)
    except UsageError as err:
        raise click.UsageError(str(err)) from err
    # Unsloth reads adapter_config.json, loads the base it names and attaches the adapter with its own code path
    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(run), dtype=getattr(torch, dtype or info.dtype), load_in_4bit=info.load_in_4bit,
        use_safetensors=True, trust_remote_code=info.trust_remote_code,
    )
    FastLanguageModel.for_inference(model)
    result = logits(model, prompt_batch(load_tokenizer(run, info.trust_remote_code)))  # the same token ids as the PEFT side
    save_file({f"prompt_{i}": tensor.contiguous() for i, tensor in enumerate(result)}, str(out))
    print(f"{type(model).__name__} with adapter from {run}: logits of {len(result)} prompts -> {out}")


if __name__ == "__main__":
    sys.exit(main())
