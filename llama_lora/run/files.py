"""The files of a run folder, each named once: the pipeline writes them, and every reader (inference, merge,
GGUF export, comparison, benchmarks) finds them by these names. A new file is one line here, added to
`COMPLETED` when every finished run holds it (tests/e2e/test_end_to_end.py checks a real run against it)."""

from __future__ import annotations

ADAPTER_CONFIG = "adapter_config.json"  # PEFT's LoRA settings and the base model it names
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # the LoRA matrices
MODEL_CARD = "README.md"  # PEFT's model card
CONFIG = "config.yaml"  # every resolved option: `--config` replays the run
METRICS = "metrics.json"  # the typed run record (llama_lora/run/run_record.py)
TRAIN_LOG = "train_log.jsonl"  # one line per logged optimizer step
AUDIT = "audit.json"  # the data audit
SAMPLES = "samples.md"  # base vs tuned answers to held-out prompts
LOSS_PLOT = "loss_curve.png"  # train and eval loss
VERIFY_REPORT = "verify.md"  # use_adapter.py verify: each export against the adapter, greedy answers side by side
VERIFY_RECORD = "verify.json"  # the same figures, verdicts and tolerances as data
CHECKPOINTS = "checkpoints"  # in the staging folder only: checkpoint-<step>/ for --resume
CHECKPOINT_SEAL = "complete.json"  # in each checkpoint-<step>/, written last: its files' sizes and hashes
FAILURE_CLAIM = ".failure-recorded"  # in the staging folder only: the first process of a launch to record a failure
STAGING_SUFFIX = ".partial"  # beside the run folder: .<name>.partial/, the run until it completes
LOCK_SUFFIX = ".lock"  # beside the run folder: .<name>.lock, locked by the run writing it (run/run_lock.py)
OWNER_STAMP = ".llama-lora.json"  # written first into every folder this tool makes: what it is (run/owned.py)
EVAL_JSON = "eval.json"  # written later by `use_adapter.py eval`: base vs tuned lm-eval scores, per task and metric
EVAL_REPORT = "eval.md"  # the same as a table

# what a completed run folder holds besides the tokenizer's own files (tokenizer.json, its config, template)
COMPLETED = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODEL_CARD, CONFIG, METRICS, TRAIN_LOG, AUDIT, SAMPLES, LOSS_PLOT,
             OWNER_STAMP)
