"""A quiet start: the README's --dry-run prints the audit and the example, and no library noise; the filters
that make it so drop only the known messages, so real warnings still show."""

from __future__ import annotations

import logging
import subprocess
import sys

from helpers import REPO

from llama_lora import quiet

# Lines a dry run may legitimately print on stderr (none today); anything else is a new library warning that
# reaches every user and must be looked at, then silenced at its source in llama_lora/quiet.py or listed here.
EXPECTED_STDERR: tuple[str, ...] = ()


def test_the_readme_dry_run_prints_no_library_warning():
    result = subprocess.run([sys.executable, "lora_peft_finetuning.py", "--dry-run"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    unexpected = [line for line in result.stderr.splitlines()
                  if line.strip() and not any(line.startswith(ok) for ok in EXPECTED_STDERR)]
    assert unexpected == []
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Data audit:") and lines[-1] == "Dry run: no model weights loaded, no run folder written."


class Collect(logging.Handler):
    """Keeps the messages that reach it (on the logger itself: torch's loggers do not propagate to the root)."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_filter_drops_its_one_message_and_keeps_the_loggers_other_warnings():
    quiet.install()
    quiet.install()  # idempotent: one filter per message
    name, text, _ = quiet.KNOWN_NOISE[0]
    logger = logging.getLogger(name)
    assert sum(isinstance(f, quiet.DropMessage) for f in logger.filters) == 1
    collect = Collect()
    logger.addHandler(collect)
    try:
        logger.warning("<enum 'X'> %s by torch.compile", text)
        logger.warning("a real problem")
    finally:
        logger.removeHandler(collect)
    assert collect.messages == ["a real problem"]


def test_bpe_tokenizers_decode_the_same_without_the_ignored_cleanup_flag(smollm2_tokenizer):
    ids = smollm2_tokenizer("Hello , world ! It 's here .")["input_ids"]
    before = smollm2_tokenizer.decode(ids)
    tokenizer = quiet.quiet_tokenizer(smollm2_tokenizer.__class__.from_pretrained(smollm2_tokenizer.name_or_path))
    assert tokenizer.clean_up_tokenization_spaces is False
    assert tokenizer.decode(ids) == before
