"""Read a run back through each tracker's own reader: TensorBoard's event accumulator, the records of an offline
W&B run file, MLflow's client, Trackio's local store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def scalars(folder: Path, tag: str, logdir: str = "tensorboard") -> list[tuple[int, float]]:
    """(step, value) of one scalar of a run folder's TensorBoard events, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def wandb_records(run_file: Path) -> list[Any]:
    """The records of an offline W&B run file (`run-*.wandb`), in order. W&B ships no reader for it (`wandb sync`
    uploads it); the file is a 7-byte W&B header, then LevelDB's log format (32 KiB blocks of chunks, each with a
    7-byte header: CRC, length, kind full/first/middle/last), each record a protobuf `Record` of wandb's own."""
    from wandb.proto import wandb_internal_pb2

    block, data = 32768, run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4) and pending:  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_run(folder: Path) -> dict[str, Any]:
    """The one offline W&B run under a folder: its project, name, history rows, config and summary."""
    (run_file,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)

    def items(kind: str, field: str) -> list[Any]:
        return [item for record in records if record.WhichOneof("record_type") == kind
                for item in getattr(getattr(record, kind), field)]

    def key(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    (run,) = [record.run for record in records if record.WhichOneof("record_type") == "run"]
    history = [{key(item): json.loads(item.value_json) for item in record.history.item}
               for record in records if record.WhichOneof("record_type") == "history"]
    return {"project": run.project, "name": run.display_name, "history": history,
            # the config given to wandb.init travels in the run record, later updates in config records
            "config": {key(item): json.loads(item.value_json) for item in [*run.config.update, *items("config", "update")]},
            "summary": {key(item): json.loads(item.value_json) for item in items("summary", "update")},
            "finished": records[-1].WhichOneof("record_type") == "exit"}


def trackio_runs(store: Path, project: str) -> dict[str, dict[str, Any]]:
    """Each run of a Trackio project in a local store: its config and logs, read through Trackio's own API (in a
    fresh process: Trackio reads TRACKIO_DIR once, when imported)."""
    script = ("import json, sys, trackio\n"
              "project = sys.argv[1]\n"
              "print(json.dumps({run.name: {'config': run.config, 'logs': trackio.SQLiteStorage.get_logs(project, "
              "run.name)} for run in trackio.Api().runs(project)}, default=str))\n")
    result = subprocess.run([sys.executable, "-c", script, project], capture_output=True, text=True, check=True,
                            env={**os.environ, "TRACKIO_DIR": str(store)}, timeout=120)
    return json.loads(result.stdout.splitlines()[-1])


def mlflow_runs(store: Path, experiment: str) -> tuple[Any, Any, dict[str, Any]]:
    """MLflow's client on a local file store, the experiment, and its runs by name."""
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 opens a file store only when asked to
    from mlflow import MlflowClient

    client = MlflowClient(store.resolve().as_uri())
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {store}"
    runs = client.search_runs([found.experiment_id])
    return client, found, {run.info.run_name: run for run in runs}
