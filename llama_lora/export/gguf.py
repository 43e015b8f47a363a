"""`export_gguf`: GGUF files and an Ollama Modelfile from a run folder or a Hugging Face model folder.

    export_gguf llama-3.1-lora-finetuned/peft --out gguf/     # LoRA GGUF + base model GGUFs + Modelfile
    export_gguf merged/ --out gguf/ --types f16,q4_k_m         # a (merged) model folder: model GGUFs + Modelfile

Works from files only: no model is loaded, so an 8B export needs about one tensor's worth of memory, and no
model's own Python code ever runs (the architectures it writes are transformers' own, so it needs none).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from llama_lora.atomic_files import write_text
from llama_lora.errors import UsageError
from llama_lora.export import gguf_writer
from llama_lora.options import remote_code
from llama_lora.export import gguf_quantize
from llama_lora.export.gguf_runtime import llama_cpp_module
from llama_lora.export.gguf_types import GGUF_TYPES
from llama_lora.run import files, run_record

MODELFILE = "Modelfile"


def is_run_folder(folder: Path) -> bool:
    return (folder / files.ADAPTER_CONFIG).is_file() and (folder / files.ADAPTER_WEIGHTS).is_file()


def is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def parse_types(value: str) -> list[str]:
    """`f16,q4_k_m` -> ["f16", "q4_k_m"], refusing unknown names."""
    types = [part.strip().lower() for part in value.split(",") if part.strip()]
    unknown = [t for t in types if t not in GGUF_TYPES]
    if not types or unknown:
        raise UsageError(f"--types {value!r}: expected a comma-separated list of " + ", ".join(GGUF_TYPES))
    if any(GGUF_TYPES[t].by_llama_cpp for t in types):
        llama_cpp_module()  # k-quants need llama.cpp: say so before any file is written
    return list(dict.fromkeys(types))


def types_help() -> str:
    """--types' help: every declared type and what it is."""
    return "Model GGUF types to write, comma-separated: " + "; ".join(
        f"{t.name} ({t.summary})" for t in GGUF_TYPES.values()) + ". k-quants go through llama.cpp's quantizer."


def local_model_folder(model: str | None) -> Path | None:
    """A model name as a run records it (alias, folder or hub id) -> its local folder, if there is one."""
    from llama_lora.model.assets import model_path

    if not model:
        return None
    model = model_path(model)
    if (Path(model) / "config.json").is_file():
        return Path(model)
    try:  # a hub model downloaded before sits in the hub cache; only its config and tokenizer are read
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a hub id: the caller names the fix
        return None


def run_base_model(run: Path) -> Path:
    """The base model a run folder trained on: the first of its recorded candidates that is a local model folder."""
    candidates = run_record.recorded_model(run).candidates()
    for candidate in candidates:
        folder = local_model_folder(candidate)
        if folder is not None and is_model_folder(folder):
            return folder
    named = next((c for c in candidates if c), "unknown")
    raise UsageError(f"{run}: the base model {named!r} is not a local model folder; pass --base FOLDER "
                     "(its config.json, tokenizer and safetensors are read)")


@click.command("gguf")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("gguf"),
              show_default=True, help="Folder for the GGUF files and the Modelfile (created if missing).")
@click.option("--types", "types", default="f16,q8_0", show_default=True, help=types_help())
@click.option("--base", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Base model folder of a run folder's adapter (default: the model the run recorded).")
@click.option("--name", default=None, help="Model name in the files' metadata and names (default: the folder's name).")
@click.option("--pre-tokenizer", default=None,
              help="llama.cpp's name for the BPE pre-tokenizer (default: recognised from the tokenizer).")
def export_gguf(source: Path, out_dir: Path, types: str, base: Path | None, name: str | None,
                pre_tokenizer: str | None) -> None:
    """Write GGUF files for llama.cpp / Ollama from SOURCE: a run folder (its LoRA adapter, plus the base
    model it was trained on) or a Hugging Face Llama model folder (for example a merged model)."""
    try:
        written = export(source, out_dir, parse_types(types), base, name, pre_tokenizer)
    except UsageError as error:
        raise click.UsageError(str(error)) from None
    report(written)
    tools = trained_tool_rows(source)
    if tools:
        click.echo(f"Note: {source} trained on {tools:,} tool-calling conversations; the Modelfile's TEMPLATE renders "
                   "no tools (serve tool calls with the run's chat_template.jinja, or add them to the TEMPLATE).",
                   err=True)


def trained_tool_rows(run: Path) -> int:
    """How many tool-calling training rows a run folder's audit.json counts (0 for a model folder)."""
    try:
        audit = json.loads((run / files.AUDIT).read_text())
    except (OSError, ValueError):
        return 0
    return sum(split.get("tool_calling_rows", 0) for split in audit.get("splits", {}).values())


def export(source: Path, out_dir: Path, types: list[str], base: Path | None, name: str | None,
           pre_tokenizer: str | None) -> list[Path]:
    """Write everything; returns the paths written, the Modelfile last."""
    from transformers import AutoTokenizer

    if is_run_folder(source):
        model_dir = base or run_base_model(source)
        if not is_model_folder(model_dir):
            raise UsageError(f"--base {model_dir}: not a model folder (expected config.json and *.safetensors)")
        tokenizer_dir = source if (source / "tokenizer.json").is_file() else model_dir
    elif is_model_folder(source):
        model_dir, tokenizer_dir = source, source
    else:
        raise UsageError(f"{source}: neither a run folder (adapter_config.json + adapter_model.safetensors) "
                         "nor a model folder (config.json + *.safetensors)")
    gguf_writer.read_llama_shape(model_dir)  # refuse an unsupported architecture before writing anything
    with remote_code.explained(str(tokenizer_dir), gguf_writer.NO_MODEL_CODE):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    fmt = gguf_writer.chat_format(tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the adapter first: it is small, and its checks (DoRA, modules_to_save) fail before any big file is written
    adapter = gguf_writer.export_adapter(source, model_dir, out_dir, name or source.name) \
        if is_run_folder(source) else None
    if adapter is None:
        model_name = name or model_dir.name
    else:  # the base files are named after the model the run recorded (smollm2, Llama-3.1-8B-Instruct)
        recorded = run_record.recorded_model(source).name if base is None else None
        model_name = Path(recorded or model_dir.name).name
    models = write_models(model_dir, out_dir, types, model_name, pre_tokenizer, tokenizer_dir)
    # Ollama applies adapters to an unquantized base most faithfully, so FROM prefers the f16 file
    base_file = models[types.index("f16")] if "f16" in types else models[0]
    modelfile = out_dir / MODELFILE
    write_text(modelfile, gguf_writer.modelfile_text(
        base_file.name, adapter.name if adapter else None, fmt, gguf_writer.default_system_prompt(tokenizer)))
    return [*models, *([adapter] if adapter else []), modelfile]


def write_models(model_dir: Path, out_dir: Path, types: list[str], name: str, pre_tokenizer: str | None,
                 tokenizer_dir: Path) -> list[Path]:
    """One model GGUF per type, in the order asked: gguf_writer's own types directly, k-quants by llama.cpp's quantizer
    from the f16 file (written to a temporary name first when f16 itself was not asked for)."""
    def write(type_name: str, folder: Path) -> Path:
        return gguf_writer.export_model(model_dir, folder, type_name, name, pre_tokenizer, progress=True,
                                        tokenizer_dir=tokenizer_dir)

    written = {t: write(t, out_dir) for t in types if not GGUF_TYPES[t].by_llama_cpp}
    quantized = [t for t in types if GGUF_TYPES[t].by_llama_cpp]
    if quantized:
        with tempfile.TemporaryDirectory(prefix=".f16-", dir=out_dir) as tmp:
            f16 = written.get("f16") or write("f16", Path(tmp))
            for type_name in quantized:
                path = out_dir / f16.name.replace("-F16.gguf", f"-{GGUF_TYPES[type_name].label}.gguf")
                result = gguf_quantize.quantize(f16, path, GGUF_TYPES[type_name].file_type, progress=True)
                if result.fallbacks:  # llama.cpp's warning, once per file instead of once per tensor
                    click.echo(f"{path.name}: llama.cpp stored {result.fallback_summary()}", err=True)
                written[type_name] = path
    return [written[t] for t in types]


def report(written: list[Path]) -> None:
    """Each file read back: what llama.cpp will see, then how to run it."""
    import gguf

    for path in written[:-1]:
        reader = gguf.GGUFReader(path)
        kind = reader.fields["general.type"].contents()
        types = sorted({t.tensor_type.name for t in reader.tensors})
        click.echo(f"{path}  {path.stat().st_size / 1e6:.1f} MB, {kind}, {len(reader.tensors)} tensors "
                   f"({', '.join(types)})")
        if kind == "adapter":
            click.echo(f"    adapter.type={reader.fields['adapter.type'].contents()}  "
                       f"adapter.lora.alpha={reader.fields['adapter.lora.alpha'].contents():g}  "
                       f"e.g. {reader.tensors[0].name} {list(map(int, reader.tensors[0].shape))}")
        else:
            field = reader.fields
            click.echo(f"    tokenizer: {field['tokenizer.ggml.model'].contents()}/"
                       f"{field['tokenizer.ggml.pre'].contents()}, {len(field['tokenizer.ggml.tokens'].data)} tokens, "
                       f"bos={field['tokenizer.ggml.bos_token_id'].contents()} "
                       f"eos={field['tokenizer.ggml.eos_token_id'].contents()}, chat template "
                       + ("yes" if "tokenizer.chat_template" in field else "no"))
    modelfile = written[-1]
    click.echo(f"{modelfile}")
    adapter = next((p for p in written if p.name.endswith("-LoRA.gguf")), None)
    click.echo(f"\nOllama:    cd {modelfile.parent} && ollama create my-model -f {MODELFILE}")
    click.echo(f"llama.cpp: llama-cli -m {written[0]}" + (f" --lora {adapter}" if adapter else ""))
