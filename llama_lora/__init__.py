"""Everything both entry scripts share: one folder per stage of a run, every import pointing down the list.

    options/   what a run is: every option declared once (config), per-model recipes, batching modes, trackers
    run/       what a run leaves behind: the run folder, its typed record, measurements, plots, comparisons
    model/     the base model before it loads: embedded assets, tokenizers, preflight checks, memory plan, NF4
    data/      rows to tokens: sources, formats, chat template, tokenized cache, the audit
    use/       a trained run folder loaded again: inference, chat, portability checks
    export/    a trained adapter leaving the project: merged weights, GGUF files, an Ollama Modelfile
    train/     one training run: the shared CLI, the pipeline's phases, the trainer, pre-emption, samples

At the package root sit the few modules every stage uses: `backend` (the one seam between the two entry
scripts), `errors`, `quiet`, `distributed` and `atomic_files`.

Why these folders: each holds one kind of thing, so a reader finds the code by the question they have
("how is a row rendered?" -> data/, "what does metrics.json hold?" -> run/), and each stays small enough
to read in a sitting. The order above is the order of the imports: a module imports only from its own
folder, the folders listed above it, and the root modules (tests/test_layout.py checks it), so the
folders form no cycle and each can be understood knowing only what is above it. The run record sits
low because almost every stage reads or writes it; training sits last because it composes the rest.
Module names say what they hold at the call site (`run_record.write`, `run_folder.staging_dir`).
"""
