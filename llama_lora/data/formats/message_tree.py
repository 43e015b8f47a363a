"""Message trees, as OpenAssistant's oasst1/oasst2 publish them: one row per message (`message_id`, `parent_id`,
`role` prompter|assistant, `text`, a `rank` among its siblings), each conversation a path from a root prompt down
the tree. `--tree-paths top-ranked` (the default) takes one path per tree, following the best-ranked reply at each
step (as OpenAssistant's own oasst_top1 does); `all` takes every path from the root to a leaf, so shared openings
are trained once per path. Deleted messages are left out. A path ends at its last assistant reply."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from llama_lora.data.formats.fields import Reading, string, unused_fields
from llama_lora.data.sources import Rows, Tally
from llama_lora.errors import DataError

TREE_FIELDS = frozenset({"message_id", "parent_id", "role", "text"})
READS = TREE_FIELDS | {"rank", "deleted", "message_tree_id"}
PATH_CHOICES = ("top-ranked", "all")


def assemble(rows: Rows, reading: Reading) -> Rows:
    """The split's conversations, one record {"messages": [...]} per path, each named by the row of its last
    message and grouped by tree (a held-out split takes whole trees)."""
    nodes, tally = _nodes(rows, reading)
    children: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for node in nodes.values():
        parent = node["record"].get("parent_id")
        children[parent if parent in nodes else None].append(node)
    records, wheres, groups = [], [], []
    for root in children[None]:
        seen = set()
        for path in _paths(root, children, reading.tree_paths):
            while path and reading.role_map.get(path[-1]["record"]["role"]) != "assistant":
                path = path[:-1]  # a prompt nobody answered teaches nothing
            ids = tuple(node["record"]["message_id"] for node in path)
            if not path or ids in seen:  # two unanswered prompts under one reply end in the same path
                continue
            seen.add(ids)
            records.append(path)
            wheres.append(path[-1]["where"])
            groups.append(root["record"]["message_id"])
    conversations = [{"messages": [{"role": n["record"]["role"], "content": n["text"]} for n in path]}
                     for path in records]
    return Rows(conversations, wheres, rows.source, groups=groups, tally=tally)


def _nodes(rows: Rows, reading: Reading) -> tuple[dict[Any, dict[str, Any]], Tally]:
    """Every usable message by id, checked; bad rows skipped into the tally under --bad-rows skip."""
    nodes, tally = {}, Tally()
    for record, where in zip(rows.records, rows.wheres):
        try:
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected an object with named fields, got {type(record).__name__}")
            if record.get("deleted") is True:
                continue
            tally.unused.update(unused_fields(record, READS, (), frozenset()))
            identifier = record.get("message_id")
            if not isinstance(identifier, (str, int)) or identifier in ("", None):
                raise DataError(f"{where}: field 'message_id': expected a non-empty id, got {identifier!r:.40}")
            if identifier in nodes:
                raise DataError(f"{where}: field 'message_id': {identifier!r:.40} appears twice (also at "
                                f"{nodes[identifier]['where']})")
            if record.get("role") not in reading.role_map:
                raise DataError(f"{where}: field 'role': unknown role {record.get('role')!r:.40}, expected one of "
                                f"{', '.join(sorted(reading.role_map))} (add names with --role-map name=role)")
            nodes[identifier] = {"record": record, "where": where, "text": string(record, where, "text")}
        except DataError as err:
            if reading.bad_rows != "skip":
                raise
            tally.skipped.append(str(err))
    return nodes, tally


def _paths(root: dict[str, Any], children: dict[Any, list[dict[str, Any]]], mode: str) -> list[list[dict[str, Any]]]:
    """Root-to-leaf paths under `root`: every one, or the one that follows the best rank (lowest; unranked last,
    ties in file order) at each step. Iterative: a deep tree does not exhaust the stack."""
    paths, stack = [], [[root]]
    while stack:
        path = stack.pop()
        below = children.get(path[-1]["record"]["message_id"], [])
        if not below:
            paths.append(path)
        elif mode == "all":
            stack.extend([*path, child] for child in reversed(below))
        else:
            stack.append([*path, min(below, key=_rank)])
    return paths


def _rank(node: dict[str, Any]) -> tuple[int, float]:
    rank = node["record"].get("rank")
    return (0, rank) if isinstance(rank, (int, float)) and not isinstance(rank, bool) else (1, 0)
