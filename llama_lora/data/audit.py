"""The data audit: what was read, what was dropped and why, what the loss will see. Printed before training
and saved as `audit.json`, so a bad template or a silently truncated dataset shows before GPU hours are spent.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from llama_lora.data.prepare import IGNORE_INDEX, Prepared, Split, data_hash

PERCENTILES = (50, 90, 95, 99)
SHOWN_WHERES = 5  # rows named per drop reason; the counts cover all of them


def build_audit(prepared: Prepared, max_seq_length: int, overlength: str, loss_on: str,
                template: str) -> dict[str, Any]:
    """The audit record of both splits."""
    splits = {"train": prepared.train, "eval": prepared.eval}
    return {
        "format": prepared.format,
        "loss_on": "all" if prepared.format == "text" else loss_on,
        "chat_template": template,
        "max_seq_length": max_seq_length,
        "overlength": overlength,
        "labels": prepared.labels,
        **prepared.options,  # reasoning, bad_rows: how the rows the audit counts were read
        "hash": prepared.hash or data_hash([*prepared.train.rows, *(prepared.eval.rows if prepared.eval else [])]),
        "splits": {name: split_audit(split) for name, split in splits.items() if split is not None},
        "cache": prepared.cache,
    }


def split_audit(split: Split) -> dict[str, Any]:
    """Counts and length statistics of one split."""
    tokens, supervised, truncated = row_totals(split.rows)
    return {
        "source": split.source,
        "rows_read": split.read,
        "rows_kept": len(split.rows),
        "rows_dropped": {reason: {"count": len(wheres), "rows": wheres[:SHOWN_WHERES]}
                         for reason, wheres in split.dropped.items()},
        "over_length": {
            "rows": len(split.over_length),
            "supervised_tokens_beyond_limit": sum(r["lost_supervised"] for r in split.over_length),
            "rows_named": [f"{r['where']} ({r['tokens']} tokens)" for r in split.over_length[:SHOWN_WHERES]],
        },
        "truncated_rows": truncated,
        "rows_skipped": {"count": len(split.skipped), "rows": split.skipped[:SHOWN_WHERES]},
        "unused_fields": split.unused,
        "weighted_out_turns": split.weighted_out,
        "reasoning_tokens": split.reasoning_tokens,
        "tool_calling_rows": tool_rows(split.rows),
        "tokens": tokens,
        "supervised_tokens": supervised,
        "supervised_share": round(supervised / tokens, 4) if tokens else 0.0,
        "length_tokens": percentiles(split.lengths),
    }


def metrics_data(audit: dict[str, Any]) -> dict[str, Any]:
    """The data section of metrics.json: format, hash, labels, the cache entry, and per split its source, counts,
    and what was left out or not trained (skipped rows, unused fields, weighted-out turns, reasoning tokens)."""
    kept = ("source", "tokens", "supervised_tokens", "rows_skipped", "unused_fields", "weighted_out_turns",
            "reasoning_tokens")
    return {
        **{key: audit[key] for key in ("format", "hash", "labels", "cache")},
        **{key: audit[key] for key in ("reasoning", "bad_rows") if key in audit},
        **{name: {"rows": split["rows_kept"], **{key: split[key] for key in kept if key in split}}
           for name, split in audit["splits"].items()},
    }


def row_totals(rows: Any) -> tuple[int, int, int]:
    """(tokens, supervised tokens, truncated rows) of kept rows: from an Arrow table's columns, or row by row."""
    if hasattr(rows, "total"):
        return rows.total("input_ids"), rows.total("trained_tokens"), rows.truncated_rows()
    return (sum(len(row["input_ids"]) for row in rows),
            sum(sum(label != IGNORE_INDEX for label in row["labels"]) for row in rows),
            sum(row["length"] > len(row["input_ids"]) for row in rows))


def tool_rows(rows: Any) -> int:
    """Kept rows that define or call tools."""
    return rows.total("tools") if hasattr(rows, "total") else sum(bool(row.get("tools")) for row in rows)


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank percentiles, plus min and max, of row lengths."""
    ordered = sorted(values)
    if not ordered:
        return {}
    picks = {f"p{p}": ordered[min(len(ordered) - 1, max(0, -(-p * len(ordered) // 100) - 1))] for p in PERCENTILES}
    return {"min": ordered[0], **picks, "max": ordered[-1]}


def print_audit(audit: dict[str, Any], console: Console | None = None) -> None:
    """The audit as a table, and the names of dropped rows."""
    console = console or Console(highlight=False)
    splits = audit["splits"]
    console.print(f"Data audit: format {audit['format']}, loss on {audit['loss_on']} tokens, "
                  f"chat template: {audit['chat_template']}", soft_wrap=True)
    reasoning_shown = any(s.get("reasoning_tokens") for s in splits.values())
    table = Table()
    table.add_column("")
    for name in splits:
        table.add_column(name, justify="right")

    def row(label: str, pick: Any) -> None:
        table.add_row(label, *(str(pick(s)) for s in splits.values()))

    row("rows read", lambda s: s["rows_read"])
    row("rows kept", lambda s: s["rows_kept"])
    if any(s.get("rows_skipped", {}).get("count") for s in splits.values()):
        row("bad rows skipped (--bad-rows skip)", lambda s: s["rows_skipped"]["count"])
    reasons = sorted({reason for s in splits.values() for reason in s["rows_dropped"]})
    for reason in reasons:
        row(f"dropped: {reason}", lambda s, r=reason: s["rows_dropped"].get(r, {}).get("count", 0))
    row(f"rows over {audit['max_seq_length']} tokens", lambda s: s["over_length"]["rows"])
    row("  their supervised tokens beyond it", lambda s: s["over_length"]["supervised_tokens_beyond_limit"])
    row("rows truncated (kept)", lambda s: s["truncated_rows"])
    if any(s.get("tool_calling_rows") for s in splits.values()):
        row("tool-calling rows (kept)", lambda s: s.get("tool_calling_rows", 0))
    row("tokens (kept rows)", lambda s: f"{s['tokens']:,}")
    row("supervised tokens", lambda s: f"{s['supervised_tokens']:,} ({s['supervised_share']:.1%})")
    if reasoning_shown:
        row(f"reasoning tokens (--reasoning {audit.get('reasoning', 'train')})", lambda s: f"{s['reasoning_tokens']:,}")
    if any(s.get("weighted_out_turns") for s in splits.values()):
        row("assistant turns with weight 0 (context)", lambda s: s["weighted_out_turns"])
    for key in ("min", *(f"p{p}" for p in PERCENTILES), "max"):
        row(f"row length {key}", lambda s, k=key: s["length_tokens"].get(k, "-"))
    console.print(table)
    for name, split in splits.items():
        for reason, dropped in split["rows_dropped"].items():
            unnamed = dropped["count"] - len(dropped["rows"])
            more = f" and {unnamed} more" if unnamed else ""
            console.print(f"{name}: dropped ({reason}): {', '.join(dropped['rows'])}{more}", soft_wrap=True)
    for name, split in splits.items():
        skipped = split.get("rows_skipped", {})
        for message in skipped.get("rows", []):
            console.print(f"{name}: skipped {message}", soft_wrap=True)
        if skipped.get("count", 0) > len(skipped.get("rows", [])):
            console.print(f"{name}: skipped {skipped['count'] - len(skipped['rows'])} more bad rows", soft_wrap=True)
        if split.get("unused_fields"):
            fields = ", ".join(f"{field} ({rows:,} row{'s' if rows != 1 else ''})"
                               for field, rows in split["unused_fields"].items())
            console.print(f"{name}: fields not trained on: {fields}", soft_wrap=True)
    console.print(f"data hash {audit['hash'][:16]}")
    cache = audit.get("cache") or {}
    if cache.get("path") not in (None, "off"):
        console.print(f"tokenized data {'cached in' if cache['built'] else 'read from the cache'} {cache['path']}",
                      soft_wrap=True)
    batching = audit.get("batching")
    if batching:
        console.print(f"batching {batching['mode']}, batch {batching['batch_size']}: expected padding "
                      f"{batching['expected_padding_share']:.1%} of the tokens computed (padded batches: "
                      f"{batching['padded_padding_share']:.1%})", soft_wrap=True)


def render_marked(tokenizer: Any, row: dict[str, Any]) -> str:
    """A tokenized row as text with every trained span wrapped in [[ ]], so masks can be checked by eye."""
    pieces, run, trained = [], [], None
    for token_id, label in zip(row["input_ids"], row["labels"]):
        is_trained = label != IGNORE_INDEX
        if run and is_trained != trained:
            pieces.append(_piece(tokenizer, run, trained))
            run = []
        run.append(token_id)
        trained = is_trained
    if run:
        pieces.append(_piece(tokenizer, run, trained))
    return "".join(pieces)


def _piece(tokenizer: Any, ids: list[int], trained: bool) -> str:
    text = tokenizer.decode(ids)
    return f"[[{text}]]" if trained else text
