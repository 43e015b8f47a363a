"""The README and docs say what the code does: each marked transcript of a CPU-cheap command is what the command
prints today, each figure of a table marked as sourced equals its committed record, and each command shown in a
runnable form names a script, subcommand and flags that exist (docs/refresh.py regenerates the transcripts)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from helpers import REPO, load_script

refresh = load_script("docs/refresh.py")

PAGES = refresh.doc_files()
TRANSCRIPTS = [block for page in PAGES for block in refresh.transcripts(page)]
CHEAP = [block for block in TRANSCRIPTS if not block.expensive]
TABLES = [table for page in PAGES for table in refresh.sourced_tables(page)]


def _cheap_param(block):
    """--help transcripts take a fraction of a second; the rest read data or build a model's shape."""
    fast = block.command.endswith("--help") or block.command.startswith('python -c "from llama_lora')
    return pytest.param(block, id=block.where, marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("block", [_cheap_param(block) for block in CHEAP])
def test_a_cheap_transcript_is_what_its_command_prints_today(block):
    fresh = refresh.regenerate(block)
    assert refresh.normalise(fresh) == refresh.normalise(block.body), (
        f"{block.where} no longer shows what `{block.command}` prints: python3 docs/refresh.py --only '{block.command}'")


def test_the_pages_hold_cheap_transcripts_expensive_ones_and_sourced_tables():
    # the checks below are only as good as the marks they find: losing them all must not pass silently
    assert len(CHEAP) >= 10 and sum(block.expensive for block in TRANSCRIPTS) >= 5 and len(TABLES) >= 6
    assert any(block.command == "python lora_peft_finetuning.py --dry-run" for block in CHEAP)
    assert any(block.command.endswith("--plan") for block in CHEAP)


def test_what_varies_between_runs_is_normalised_and_nothing_else():
    varying = ["tokenized data cached in ~/.cache/llama-lora/data/788aeb5a4718ec3cbed44850",
               "  speed       254 non-padding tokens/s (202 s training)", "[peft] (switched in 12.3 ms)"]
    again = ["tokenized data cached in ~/.cache/llama-lora/data/0123456789abcdef01234567",
             "  speed       97 non-padding tokens/s (692 s training)", "[peft] (switched in 14.4 ms)"]
    assert refresh.normalise(varying) == refresh.normalise(again)
    # a stale figure must still show: the embedded model's --plan once said batch 4 where the recipe is now batch 2
    assert refresh.normalise(["batch 4 x 2048 tokens"]) != refresh.normalise(["batch 2 x 2048 tokens"])
    assert refresh.normalise(["eval loss   2.5988 -> 2.1499"]) != refresh.normalise(["eval loss   2.5988 -> 2.1501"])


def test_refreshing_a_page_replaces_only_the_marked_blocks_output(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Intro.\n\n<!-- command: echo hello -->\n```text\n$ echo hello\nstale\n```\nAfter.\n\n"
                    "````text\n<!-- command: echo not a mark, only shown -->\n```text\n```\n````\n\n"
                    "<!-- command (expensive, exit 3, from \"b\"): printf 'a\\nb\\nc\\n'; exit 3 -->\n```text\n```\n")
    blocks = refresh.transcripts(page)
    assert [(block.command, block.expensive, block.exit) for block in blocks] == [
        ("echo hello", False, 0), ("printf 'a\\nb\\nc\\n'; exit 3", True, 3)]
    fresh = {block.key: refresh.regenerate(block) for block in blocks}
    refresh.rewrite(page, fresh, {blocks[1].key: refresh.caption(0.5, 0.25)})
    text = page.read_text()
    assert "$ echo hello\nhello\n```\nAfter." in text and "stale" not in text
    assert "echo not a mark, only shown -->\n```text\n```" in text
    assert re.search(r"\$ printf .*\n\.\.\.\nb\nc\n```\n_Printed on \d{4}-\d\d-\d\d on .*; load average 0.50 "
                     r"when the command started, 0.25 when it ended._\n", text)


def test_a_progress_bar_shows_its_last_state_as_on_a_terminal():
    printed = ("Loading weights:   0%|          | 0/272\rLoading weights: 100%|##########| 272/272\n"
               "Loading weights:  48%|####      | 130/272\nLoading weights: 100%|##########| 272/272\n"
               "\x1b[1mSaved\x1b[0m  \nWriting shards: 100%|#| 1/1\n")
    assert refresh.clean(printed).split("\n") == [
        "Loading weights: 100%|##########| 272/272", "Saved", "Writing shards: 100%|#| 1/1"]


def test_a_command_that_ends_with_another_status_or_an_unknown_option_is_an_error(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- command: exit 2 -->\n```text\n```\n")
    with pytest.raises(refresh.DocError, match="exited with 2, expected 0"):
        refresh.regenerate(refresh.transcripts(page)[0])
    page.write_text("<!-- command (expensiv): true -->\n```text\n```\n")
    with pytest.raises(refresh.DocError, match="unknown marker option 'expensiv'"):
        refresh.transcripts(page)


@pytest.mark.parametrize("table", TABLES, ids=lambda table: table.where)
def test_each_figure_of_a_sourced_table_equals_its_record(table):
    assert refresh.figure_problems(table) == []


def test_a_figure_that_is_not_its_records_value_is_reported():
    table = next(table for table in TABLES if table.record.endswith("learning-cpu-2026-11-27.json"))
    row = next(row for row in table.rows if "2.599" in row)
    planted = row.replace("2.150", "2.152", 1)  # the after-training eval loss of another seed
    problems = refresh.figure_problems(type(table)(table.path, table.line, table.record, table.expressions,
                                                   tuple(planted if r == row else r for r in table.rows)))
    assert len(problems) == 1 and "2.152" in problems[0]


def test_figures_are_compared_at_the_precision_shown():
    assert refresh.matches("5,026", 5025.8) and refresh.matches("1.93", 9677.5 / 5025.8)
    assert not refresh.matches("5,062", 5025.8) and not refresh.matches("1.92", 9677.5 / 5025.8)
    assert refresh.figures("| A: QLoRA r=32 | 9,194 (batch 2) | `--max-steps 60` | [x](a-2026.md) | -37% |") == [
        "9,194", "2", "-37"]


# ------------------------------------------------------------------------------------------ commands as shown

# Programs the docs may show that this test cannot run here (not installed, or not ours); anything else unknown fails.
EXTERNAL = {"ollama", "llama-cli", "tensorboard", "wandb", "mlflow", "trackio", "cd", "cat", "printf", "pip", "git",
            "nvidia-smi", "sed", "head", "tail", "ls", "export", "grep", "sbatch", "torchrun"}
SEPARATORS = {"&&", "||", "|", ";"}
PASSED_ON = {"compare_backends.py": "lora_peft_finetuning.py"}  # a script that hands unknown flags to another
COMMAND_START = re.compile(r"^(python3? |bash setup\.sh|hf |accelerate launch |ollama |llama-cli )")


def shown_commands(page: Path) -> list[tuple[str, str]]:
    """(where, command line) for each command a page shows: lines of bash blocks, `$ ` lines of other fenced blocks,
    and code spans of the prose (a paragraph at a time, so a span may wrap) that start like a command."""
    lines = page.read_text().split("\n")
    prose = refresh.outside_fences(lines)
    found: list[tuple[str, str]] = []
    paragraph: list[str] = []
    info = ""
    for index, line in enumerate(lines):
        where = f"{page.relative_to(REPO)}:{index + 1}"
        if prose[index] and line.strip():
            paragraph.append(line.strip())
            continue
        found += [(where, span) for span in re.findall(r"`([^`]+)`", " ".join(paragraph))
                  if COMMAND_START.match(span)]
        paragraph = []
        if not prose[index] and (index == 0 or prose[index - 1]):
            info = line.strip("`").strip()  # the opening fence of a block
        elif not prose[index] and info in ("bash", "sh") and line.strip() and not line.startswith("```"):
            found.append((where, line.strip()))
        elif not prose[index] and line.startswith("$ "):
            found.append((where, line[2:]))
    return [(where, command) for where, command in _joined(found)]


def _joined(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Shell lines continued with a trailing backslash, joined."""
    joined: list[tuple[str, str]] = []
    for where, command in found:
        if joined and joined[-1][1].endswith("\\"):
            joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + command)
        else:
            joined.append((where, command))
    return joined


def segments(command: str) -> list[list[str]]:
    """The simple commands of a shell line: split at && | ; with redirections and leading VAR=value dropped."""
    tokens = shlex.split(command, comments=True)
    parts, current = [], []
    for token in [*tokens, ";"]:
        if token in SEPARATORS:
            while current and re.match(r"^[A-Z_]+=", current[0]):
                current.pop(0)
            if current:
                parts.append(current)
            current = []
        else:
            current.append(token)
    return [[t for i, t in enumerate(part) if not any(p in ("<", ">") for p in part[:i + 1])] for part in parts]


@lru_cache(maxsize=None)
def help_text(program: tuple[str, ...]) -> str:
    """What `--help` prints for a program and subcommand path."""
    done = subprocess.run([*program, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    assert done.returncode == 0, f"{' '.join(program)} --help failed:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def subcommands(text: str) -> set[str]:
    """The commands a click-style help lists under a heading ending in 'ommands:'."""
    names, listing = set(), False
    for line in text.split("\n"):
        if line.rstrip().endswith("ommands:"):
            listing = True
        elif listing and re.match(r"^  \S", line):
            names.add(line.split()[0])
        elif listing and line.strip() and not line.startswith(" "):
            listing = False
    return names


def flag_problems(program: tuple[str, ...], args: list[str], where: str) -> list[str]:
    """Flags (and a leading subcommand) that the program's --help does not list."""
    text = help_text(program)
    positional = [arg for arg in args if not arg.startswith("-")]
    commands = subcommands(text)
    if commands and positional and positional[0] in commands:
        return flag_problems((*program, positional[0]), args[args.index(positional[0]) + 1:], where)
    if commands and not any(arg in ("-h", "--help") for arg in args):
        return [f"{where}: `{' '.join(program)}` needs one of its commands {sorted(commands)}"]
    known = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))
    used = [arg.strip("[]").split("=")[0] for arg in args if re.fullmatch(r"\[?--?[A-Za-z][\w-]*(=\S*)?\]?", arg)]
    unknown = [flag for flag in used if flag not in known]
    passed_on = PASSED_ON.get(program[-1])
    if passed_on and "--run" in args:  # compare_backends.py --run gives the other flags to both entry scripts
        unknown = [flag for flag in unknown if flag not in set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)",
                                                                         help_text((sys.executable, passed_on))))]
    return [f"{where}: `{' '.join(program[1:] or program)}` has no option {flag}" for flag in unknown]


def python_problems(args: list[str], where: str) -> list[str]:
    """A `python SCRIPT ...` or `python -m MODULE ...` command: the script or module exists, its flags too."""
    if args[0] == "-c":
        return []
    if args[0] == "-m":
        module = args[1]
        path = REPO / module.replace(".", "/")
        if module.startswith("llama_lora") and not (path.with_suffix(".py").is_file()
                                                    or (path / "__main__.py").is_file()):
            return [f"{where}: no module {module}"]
        return []
    scripts = sorted(REPO.glob(args[0])) if "*" in args[0] else [REPO / args[0]]
    if not scripts or not all(script.is_file() for script in scripts):
        return [f"{where}: no script {args[0]}"]
    return [problem for script in scripts
            for problem in flag_problems((sys.executable, str(script.relative_to(REPO))), args[1:], where)]


def shell_script_problems(args: list[str], where: str) -> list[str]:
    """A `bash SCRIPT ...` command: the script exists, and its options and first word are cases it handles."""
    script = REPO / args[0]
    if not script.is_file():
        return [f"{where}: no script {args[0]}"]
    words = [arg for arg in args[1:] if arg.startswith("-")] + [arg for arg in args[1:2] if not arg.startswith("-")]
    text = script.read_text()
    return [f"{where}: {args[0]} handles no {word}" for word in words
            if not re.search(rf"^\s*{re.escape(word)}\)", text, re.M)]


def command_problems(where: str, command: str) -> list[str]:
    """What is wrong with one shown command line, as far as this machine can tell."""
    problems = []
    for part in segments(command):
        program, args = part[0], part[1:]
        if program in ("python", "python3") and args:
            problems += python_problems(args, where)
        elif program == "bash" and args:
            problems += shell_script_problems(args, where)
        elif program == "accelerate" and args[:1] == ["launch"]:
            script = next((i for i, arg in enumerate(args) if arg.endswith(".py")), None)
            configs = [args[i + 1] for i, arg in enumerate(args[:script]) if arg == "--config_file"]
            problems += [f"{where}: no accelerate config {config}" for config in configs
                         if not (REPO / config).is_file()]
            problems += python_problems(args[script:], where) if script else [f"{where}: launches no script"]
        elif program == "hf":
            problems += flag_problems(("hf",), args, where)
        elif program not in EXTERNAL:
            problems.append(f"{where}: `{program}` is neither a project command nor a known external tool")
    return problems


SHOWN = [(where, command) for page in PAGES for where, command in shown_commands(page)]


def test_the_pages_show_the_user_path_as_commands():
    commands = [command for _, command in SHOWN]
    for expected in ("hf auth login", "hf download meta-llama/Llama-3.1-8B-Instruct", "--dry-run", "--plan",
                     "use_adapter.py chat", "use_adapter.py merge", "use_adapter.py gguf", "ollama create"):
        assert any(expected in command for command in commands), expected
    assert not any("huggingface-cli" in command for command in commands)  # removed from huggingface_hub 1.x


@pytest.mark.parametrize("where,command", SHOWN, ids=[where for where, _ in SHOWN])
def test_a_shown_command_names_a_script_and_flags_that_exist(where, command):
    assert command_problems(where, command) == []


def test_a_misspelt_flag_or_script_in_a_shown_command_is_reported():
    assert command_problems("x", "python lora_peft_finetuning.py --learning-rat 1e-4")
    assert command_problems("x", "python use_adapter.py swapp a b")
    assert command_problems("x", "python lora_peft_finetunning.py")
    assert command_problems("x", "huggingface-cli download meta-llama/Llama-3.1-8B-Instruct")
    assert command_problems("x", "bash setup.sh --wheelhuose DIR")
    assert command_problems("x", "bash benchmarks/gpu_check_device.sh instal")
    assert command_problems("x", "python use_adapter.py merge RUN OUT --dtype float32") == []
    assert command_problems("x", "bash setup.sh --wheelhouse wheelhouse/") == []


def test_the_example_llama_config_is_the_architecture_the_benchmark_measured():
    import json

    example = json.loads((REPO / "docs/examples/llama-3.1-8b/config.json").read_text())
    architecture = load_script("benchmarks/train_throughput.py").LLAMA31_8B
    for key, value in architecture.items():
        if key == "rope_scaling":  # transformers 5 writes it, with rope_theta, as rope_parameters
            assert {**value, "rope_theta": architecture["rope_theta"]}.items() <= example["rope_parameters"].items()
        elif key != "rope_theta":
            assert example[key] == value, key
