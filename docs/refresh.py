"""Regenerate the command transcripts in the README and docs, and check the figures taken from committed records.

    python3 docs/refresh.py                     # run each CPU-cheap marked command, rewrite its output block
    python3 docs/refresh.py --only dry-run      # only the blocks whose file or command contains the pattern
    python3 docs/refresh.py --expensive         # also the expensive ones (whole training runs), on a quiet machine
    python3 docs/refresh.py --check             # rewrite nothing; exit 1 if a cheap block or a sourced figure is off
    python3 docs/refresh.py --list              # the marked blocks and tables, where they are

A transcript is an HTML comment naming the command, then a fenced block that shows `$ command` and its output:

    <!-- command: python lora_peft_finetuning.py --dry-run -->
    ```text
    $ python lora_peft_finetuning.py --dry-run
    ...
    ```

Options go in parentheses, comma-separated: `<!-- command (expensive, exit 2, from "Saved adapter", lines 12): ... -->`
(`expensive`: refreshed only with --expensive, never by the tests; `exit N`: the status the command must end with;
`from "TEXT"`: keep the output from the first line containing TEXT; `lines N`: keep at most N lines). Every command
runs in bash from the repository root without a GPU (CUDA_VISIBLE_DEVICES empty), 100 columns wide, with an empty
tokenized-data cache, `python` being this interpreter. Expensive commands build on each other (the adapter pages use
the run folder the first training command writes), so --expensive runs all of them, in file order, in a temporary
copy of the repository; --only then limits which blocks are rewritten. Under an expensive block the refresh writes
the date, the machine and its load when the command started and ended.

A table whose figures come from a committed record is marked with the record (its path from the repository root)
and one line per table row, listing an expression for each number in that row (the first column, code spans and
link targets left out):

    <!-- figures from benchmarks/results/NVIDIA-H100-80GB-HBM3-2026-11-23.json
    configs.A.backends.peft.median_tokens_per_s, configs.A.backends.unsloth.median_tokens_per_s
    -->

An expression reads the JSON record by path (`runs.peft[0].wall_s`, `configs["R-padded"]`), a Markdown record by
`cell("row text", "column header")`, and may use + - * / and min, max, abs. A figure must equal its expression
rounded to the decimals shown. Tables without the mark are not checked; the tests require every mark to hold.
"""

from __future__ import annotations

import ast
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import click

REPO = Path(__file__).resolve().parent.parent
# Every page with transcripts or sourced figures, in the order expensive commands run (the README's first command
# writes the run folder the later pages use).
DOC_FILES = ("README.md", "docs/*.md", "benchmarks/README.md", "llama-3.1-lora-finetuned/README.md")
TIMEOUT_S = {"cheap": 300, "expensive": 3600}

COMMAND = re.compile(r"^<!-- command(?: \((?P<options>[^)]*)\))?: (?P<command>.+?) -->\s*$")
OPTION = re.compile(r'\s*(?:(?P<expensive>expensive)|exit (?P<exit>\d+)|from "(?P<start>[^"]+)"|lines (?P<lines>\d+))'
                    r'\s*(?:,|$)')
FIGURES = re.compile(r"^<!-- figures from (?P<record>\S+)\s*$")
CAPTION = re.compile(r"^_Printed on \d{4}-\d{2}-\d{2} ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# What varies between two runs of the same command and is not the doc's business: compared as placeholders.
VARYING = (
    (re.compile(r"\b[0-9a-f]{24}\b"), "<cache key>"),  # a cache entry is keyed by the code and data it was built from
    (re.compile(r"/tmp/[^\s'\"]+"), "<temporary path>"),
    (re.compile(r"\d[\d,]*(?:\.\d+)?(?= ?(?:ms|s|min|it/s|s/it)\b)"), "<time>"),
    (re.compile(r"\d[\d,]*(?:\.\d+)?(?= (?:non-padding )?tokens/s)"), "<speed>"),
)


@dataclass(frozen=True)
class Transcript:
    """One marked command and the fenced block that shows its output."""

    path: Path
    line: int  # 0-based index of the marker line
    command: str
    expensive: bool
    exit: int
    start: str | None
    lines: int | None
    body: tuple[str, ...]  # the block's lines between the fences
    fence_end: int  # index of the closing fence

    ordinal: int = 0  # how many blocks with the same command come before it on its page

    @property
    def where(self) -> str:
        return f"{shown(self.path)}:{self.line + 1}"

    @property
    def key(self) -> tuple[str, bool, int]:
        """What identifies the block on its page even after the lines around it moved."""
        return self.command, self.expensive, self.ordinal


@dataclass(frozen=True)
class SourcedTable:
    """A Markdown table whose figures must equal expressions over a committed record."""

    path: Path
    line: int
    record: str
    expressions: tuple[str, ...]  # one line per body row
    rows: tuple[str, ...]  # the table's body rows

    @property
    def where(self) -> str:
        return f"{shown(self.path)}:{self.line + 1}"


class DocError(ValueError):
    """A malformed mark, a command that ended unexpectedly, or a figure that is not its record's."""


# ------------------------------------------------------------------------------------------------ reading marks

def shown(path: Path) -> str:
    """A page's path as messages name it: from the repository root when it is inside."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def doc_files(root: Path = REPO) -> list[Path]:
    """The pages that may hold marks, in the order their expensive commands run."""
    found: list[Path] = []
    for pattern in DOC_FILES:
        found += sorted(path for path in root.glob(pattern) if path.is_file())
    return found


def parse_options(text: str, where: str) -> dict[str, Any]:
    """A marker's options, refusing anything it does not know (a typo must not silently change what is checked)."""
    options: dict[str, Any] = {"expensive": False, "exit": 0, "start": None, "lines": None}
    position = 0
    while position < len(text):
        match = OPTION.match(text, position)
        if not match or match.end() == position:
            raise DocError(f"{where}: unknown marker option {text[position:]!r} "
                           '(expected expensive, exit N, from "TEXT", lines N)')
        if match["expensive"]:
            options["expensive"] = True
        if match["exit"]:
            options["exit"] = int(match["exit"])
        if match["start"]:
            options["start"] = match["start"]
        if match["lines"]:
            options["lines"] = int(match["lines"])
        position = match.end()
    return options


def _fence(lines: list[str], after: int, where: str) -> tuple[int, int]:
    """(opening, closing) line indexes of the fenced block that follows a marker."""
    opening = after + 1
    while opening < len(lines) and not lines[opening].strip():
        opening += 1
    if opening >= len(lines) or not lines[opening].startswith("```"):
        raise DocError(f"{where}: a command marker must be followed by a fenced block")
    closing = next((i for i in range(opening + 1, len(lines)) if lines[i].rstrip() == "```"), None)
    if closing is None:
        raise DocError(f"{where}: the fenced block is never closed")
    return opening, closing


def outside_fences(lines: list[str]) -> list[bool]:
    """For each line, whether it is prose (outside every fenced block): a mark shown as an example inside a
    fence is not a mark. A fence closes only at a line of at least as many backticks as opened it."""
    outside, opened = [], 0
    for line in lines:
        ticks = len(line) - len(line.lstrip("`"))
        if opened == 0 and ticks >= 3:
            outside.append(False)
            opened = ticks
        elif opened and ticks >= opened and not line.strip("`").strip():
            outside.append(False)
            opened = 0
        else:
            outside.append(opened == 0)
    return outside


def transcripts(path: Path) -> list[Transcript]:
    """Every marked command of one page."""
    lines = path.read_text().split("\n")
    prose = outside_fences(lines)
    found: list[Transcript] = []
    for index, line in enumerate(lines):
        match = COMMAND.match(line) if prose[index] else None
        if not match:
            continue
        where = f"{shown(path)}:{index + 1}"
        options = parse_options(match["options"] or "", where)
        opening, closing = _fence(lines, index, where)
        ordinal = sum(1 for block in found if (block.command, block.expensive) ==
                      (match["command"], options["expensive"]))
        found.append(Transcript(path, index, match["command"], body=tuple(lines[opening + 1:closing]),
                                fence_end=closing, ordinal=ordinal, **options))
    return found


def sourced_tables(path: Path) -> list[SourcedTable]:
    """Every table marked as sourced from a record, with its expressions and body rows."""
    lines = path.read_text().split("\n")
    prose = outside_fences(lines)
    found = []
    for index, line in enumerate(lines):
        match = FIGURES.match(line) if prose[index] else None
        if not match:
            continue
        where = f"{shown(path)}:{index + 1}"
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "-->"), None)
        if end is None:
            raise DocError(f"{where}: the figures mark is never closed with a '-->' line")
        table = end + 1
        while table < len(lines) and not lines[table].strip():
            table += 1
        rows = []
        for row in lines[table:]:
            if not row.startswith("|"):
                break
            rows.append(row)
        if len(rows) < 3:
            raise DocError(f"{where}: a figures mark must be followed by a table")
        found.append(SourcedTable(path, index, match["record"], tuple(lines[index + 1:end]), tuple(rows[2:])))
    return found


# --------------------------------------------------------------------------------------------- running commands

PROGRESS = re.compile(r"^(?P<label>[^|]*?):\s+\d+%\|")


def clean(output: str) -> str:
    """What a terminal would show: the last state of each progress bar, no colours, no trailing spaces."""
    shown: list[str] = []
    for line in ANSI.sub("", output).split("\n"):
        parts = [part for part in line.split("\r") if part.strip()]
        line = parts[-1].rstrip() if parts else ""
        bar = PROGRESS.match(line)
        # a bar redrawn on a new line (no terminal to return to) replaces its previous state, as it would on screen
        if bar and shown and (previous := PROGRESS.match(shown[-1])) and previous["label"] == bar["label"]:
            shown[-1] = line
        else:
            shown.append(line)
    return "\n".join(shown).strip("\n")


def _python_shim(folder: Path) -> None:
    """`python` and `python3` in PATH run this interpreter (a script, not a symlink: a venv finds itself by its path)."""
    for name in ("python", "python3"):
        shim = folder / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        shim.chmod(0o755)


def run(command: str, cwd: Path = REPO, timeout: float = TIMEOUT_S["cheap"]) -> tuple[int, str]:
    """Run one documented command as a reader would; return its exit status and what it printed, with the folder it
    ran in shown relative, the temporary data cache as the default one, and the home folder as ~."""
    with tempfile.TemporaryDirectory() as shims, tempfile.TemporaryDirectory() as cache:
        _python_shim(Path(shims))
        env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb", "PYTHONUNBUFFERED": "1",
               "CUDA_VISIBLE_DEVICES": "", "LLAMA_LORA_DATA_CACHE": cache,
               "PATH": shims + os.pathsep + os.environ.get("PATH", "")}
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout)
        output = done.stdout
        for path, shown in ((f"{cwd}/", ""), (str(cwd), "."), (cache, "~/.cache/llama-lora/data"),
                            (str(Path.home()), "~")):
            output = output.replace(path, shown)
    return done.returncode, clean(output)


def render(block: Transcript, output: str) -> list[str]:
    """The block's new lines: the command, then the part of its output the marker keeps."""
    lines = output.split("\n") if output else []
    shown = [f"$ {block.command}"]
    if block.start is not None:
        first = next((i for i, line in enumerate(lines) if block.start in line), None)
        if first is None:
            raise DocError(f"{block.where}: the output has no line containing {block.start!r}")
        if first > 0:
            shown.append("...")
        lines = lines[first:]
    if block.lines is not None and len(lines) > block.lines:
        lines = lines[:block.lines] + ["..."]
    return shown + lines


def regenerate(block: Transcript, cwd: Path = REPO) -> list[str]:
    """Run a block's command and return the block's new lines; a wrong exit status is an error."""
    status, output = run(block.command, cwd, TIMEOUT_S["expensive" if block.expensive else "cheap"])
    if status != block.exit:
        raise DocError(f"{block.where}: `{block.command}` exited with {status}, expected {block.exit}:\n{output}")
    return render(block, output)


def normalise(lines: list[str] | tuple[str, ...]) -> list[str]:
    """Lines with what varies between runs (timings, cache keys, temporary paths) replaced by placeholders."""
    result = []
    for line in lines:
        for pattern, placeholder in VARYING:
            line = pattern.sub(placeholder, line)
        result.append(line)
    return result


def stale(block: Transcript) -> list[str] | None:
    """The block's fresh lines if they differ from the page (beyond what varies between runs), else None."""
    fresh = regenerate(block)
    return fresh if normalise(fresh) != normalise(block.body) else None


# --------------------------------------------------------------------------------------------- sourced figures

NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")
CODE_OR_LINK = re.compile(r"`[^`]*`|\]\([^)]*\)")


def figures(row: str) -> list[str]:
    """The numbers of a table row as written, the first column, code spans and link targets left out."""
    cells = row.strip().strip("|").split("|")[1:]
    return NUMBER.findall(CODE_OR_LINK.sub(" ", "|".join(cells)))


def read_record(path: Path) -> Any:
    """A committed record: parsed JSON, or the text of a Markdown record."""
    import json

    return json.loads(path.read_text()) if path.suffix == ".json" else path.read_text()


def markdown_cell(text: str, row: str, column: str) -> float:
    """The first number of the cell in the one table row containing `row`, under the header `column`."""
    matches = []
    header: list[str] = []
    for line in text.split("\n"):
        if not line.startswith("|"):
            header = []
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not header:
            header = cells
        elif not set(line) <= set("|-: ") and row in line and column in header:
            matches.append(cells[header.index(column)])
    if len(matches) != 1:
        raise DocError(f"cell({row!r}, {column!r}): {len(matches)} rows match, expected exactly one")
    number = NUMBER.search(matches[0])
    if not number:
        raise DocError(f"cell({row!r}, {column!r}): no number in {matches[0]!r}")
    return float(number.group().replace(",", ""))


BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
FUNCTIONS: dict[str, Callable[..., float]] = {"min": min, "max": max, "abs": abs}


def evaluate(expression: str, record: Any) -> Any:
    """Evaluate one figure's expression over a record: paths, numbers, + - * /, min, max, abs and cell()."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
            return node.value
        if isinstance(node, ast.Name):
            return record[node.id]
        if isinstance(node, ast.Attribute):
            return value(node.value)[node.attr]
        if isinstance(node, ast.Subscript):
            return value(node.value)[value(node.slice)]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            return BINARY[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            args = [value(arg) for arg in node.args]
            if node.func.id == "cell":
                return markdown_cell(record, *args)
            if node.func.id in FUNCTIONS:
                return FUNCTIONS[node.func.id](*args)
        raise DocError(f"{expression!r}: {ast.dump(node)[:60]} is not allowed in a figure's expression")

    try:
        return value(ast.parse(expression.strip(), mode="eval").body)
    except (KeyError, IndexError, TypeError) as err:
        raise DocError(f"{expression!r}: the record has no such value ({err!r})") from err


def row_expressions(line: str) -> list[str]:
    """The comma-separated expressions of one mark line ('-': a row without figures)."""
    if line.strip() in ("", "-"):
        return []
    tree = ast.parse(f"({line},)", mode="eval").body
    return [ast.get_source_segment(f"({line},)", element) for element in tree.elts]


def matches(shown: str, expected: float) -> bool:
    """A figure as written equals the value rounded to the decimals it shows."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown.replace(",", "")) - expected) <= 0.5 * 10 ** -decimals + 1e-9


def links_record(page: str, record: Path) -> bool:
    """Whether a page links a record, or the Markdown record written beside a JSON one."""
    names = {record.name, record.with_suffix(".md").name}
    return any(Path(target.split("#")[0]).name in names for target in re.findall(r"\]\(([^)\s]+)\)", page))


def figure_problems(table: SourcedTable) -> list[str]:
    """Each figure of a sourced table that is not its record's value, or does not line up with an expression."""
    record_path = REPO / table.record
    if not record_path.is_file():
        return [f"{table.where}: no committed record {table.record}"]
    if not links_record(table.path.read_text(), record_path):
        return [f"{table.where}: the page never links the record {table.record} (or its .md)"]
    record = read_record(record_path)
    if len(table.expressions) != len(table.rows):
        return [f"{table.where}: {len(table.expressions)} expression lines for {len(table.rows)} table rows"]
    problems = []
    for row, line in zip(table.rows, table.expressions):
        shown, wanted = figures(row), row_expressions(line)
        if len(shown) != len(wanted):
            problems.append(f"{table.where}: row {row[:50]!r} shows {len(shown)} figures {shown}, "
                            f"the mark gives {len(wanted)} expressions")
            continue
        for figure, expression in zip(shown, wanted):
            expected = evaluate(expression, record)
            if not isinstance(expected, (int, float)) or not matches(figure, expected):
                problems.append(f"{table.where}: {figure} in row {row[:50]!r} is not {expression} = {expected!r}")
    return problems


# ---------------------------------------------------------------------------------------------- rewriting pages

def machine() -> str:
    """The machine a transcript was printed on, in words."""
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        gpu = []
    cpu = f"a {os.cpu_count()}-core {platform.machine()} CPU"
    return f"{cpu} (GPU hidden: {gpu[0]})" if gpu else f"{cpu} without a GPU"


def caption(load_before: float, load_after: float) -> str:
    """The line written under an expensive transcript: when, on what, and how loaded the machine was (its times
    and speeds mean something only on a machine that ran nothing else)."""
    return (f"_Printed on {datetime.date.today().isoformat()} on {machine()}; load average {load_before:.2f} when the "
            f"command started, {load_after:.2f} when it ended._")


Key = tuple[str, bool, int]


def rewrite(path: Path, fresh: dict[Key, list[str]], captions: dict[Key, str]) -> None:
    """Replace the blocks of one page with their fresh lines, last block first (the page is read again now, so
    edits made while the commands ran are kept)."""
    lines = path.read_text().split("\n")
    for block in sorted(transcripts(path), key=lambda b: b.line, reverse=True):
        if block.key not in fresh:
            continue
        after = lines[block.fence_end + 1:]
        if block.key in captions:
            if after and CAPTION.match(after[0]):
                after = after[1:]
            after = [captions[block.key], *after]
        opening = block.fence_end - len(block.body) - 1
        lines = lines[:opening + 1] + fresh[block.key] + ["```"] + after
    path.write_text("\n".join(lines))


def selected(block: Transcript, only: str | None) -> bool:
    """Whether --only picks this block (its page's path or its command contains the pattern)."""
    return only is None or only in shown(block.path) or only in block.command


def repository_copy(target: Path) -> Path:
    """The repository's tracked and unignored files copied into target (expensive commands write run folders)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def expensive_outputs(blocks: list[Transcript]) -> Iterator[tuple[Transcript, list[str] | str, str]]:
    """Run every expensive block in order in one temporary copy of the repository, yielding each one's lines (or,
    when its command failed, the reason: later blocks still run, and those that needed it fail in turn) and the
    caption saying how loaded the machine was while it ran."""
    with tempfile.TemporaryDirectory(prefix="llama-lora-docs-") as folder:
        copy = repository_copy(Path(folder))
        for block in blocks:
            click.echo(f"running (expensive) {block.where}: {block.command}", err=True)
            before = os.getloadavg()[0]
            try:
                lines: list[str] | str = regenerate(block, copy)
            except (DocError, subprocess.TimeoutExpired) as err:
                lines = str(err)
            yield block, lines, caption(before, os.getloadavg()[0])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--only", metavar="PATTERN", help="Only blocks whose page path or command contains PATTERN.")
@click.option("--expensive", is_flag=True, help="Also refresh the expensive blocks (all run, in order).")
@click.option("--check", is_flag=True, help="Rewrite nothing; exit 1 if a cheap block or a sourced figure is off.")
@click.option("--list", "list_only", is_flag=True, help="List the marked blocks and sourced tables, and exit.")
def main(only: str | None, expensive: bool, check: bool, list_only: bool) -> None:
    """Regenerate the command transcripts of README.md and docs/, and check their sourced figures."""
    pages = doc_files()
    blocks = [block for page in pages for block in transcripts(page)]
    tables = [table for page in pages for table in sourced_tables(page)]
    if list_only:
        for block in blocks:
            click.echo(f"{block.where}  {'expensive' if block.expensive else 'cheap    '}  {block.command}")
        for table in tables:
            click.echo(f"{table.where}  figures    {table.record}")
        return
    problems = [problem for table in tables for problem in figure_problems(table)]
    changed: list[str] = []
    fresh: dict[Path, dict[Key, list[str]]] = {}
    for block in blocks:
        if block.expensive or not selected(block, only):
            continue
        click.echo(f"running {block.where}: {block.command}", err=True)
        try:
            lines = stale(block)
        except DocError as err:
            problems.append(str(err))
            continue
        if lines is not None:
            changed.append(f"{block.where}: `{block.command}` prints something else now")
            fresh.setdefault(block.path, {})[block.key] = lines
    captions: dict[Path, dict[Key, str]] = {}
    if expensive and not check:
        chain = [block for block in blocks if block.expensive]
        if any(selected(block, only) for block in chain):
            for block, lines, printed in expensive_outputs(chain):
                if isinstance(lines, str):
                    problems.append(lines)
                elif selected(block, only):
                    fresh.setdefault(block.path, {})[block.key] = lines
                    captions.setdefault(block.path, {})[block.key] = printed
    for line in changed + problems:
        click.echo(line, err=True)
    if check:
        sys.exit(1 if changed or problems else 0)
    for path, blocks_of_page in fresh.items():
        rewrite(path, blocks_of_page, captions.get(path, {}))
        click.echo(f"rewrote {len(blocks_of_page)} block(s) in {shown(path)}", err=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
