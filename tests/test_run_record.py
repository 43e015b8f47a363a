"""metrics.json is one typed record (llama_lora/run/run_record.py), written by the pipeline and read by compare,
inference, the GGUF command, the benchmark and the tests. The fixture is the metrics.json of a real 2-step run
of the embedded model by the code before the record had a version (main at f773af3: `lora_peft_finetuning.py
--dataset <12 dialogues> --max-steps 2 --samples 0 --batch-size 2 --grad-accum 1 --eval-fraction 0.2
--max-seq-length 256`), so old run folders are checked to still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llama_lora.errors import UsageError
from llama_lora.export.gguf import run_base_model
from llama_lora.run import run_record
from llama_lora.run.compare import FAIRNESS, REPORT_PATHS, load_run
from llama_lora.use.inference import read_run

FIXTURE = Path(__file__).parent / "fixtures" / "metrics_v1_main_f773af3.json"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A run folder holding the version-1 record (and the adapter config a run folder has)."""
    folder = tmp_path / "peft"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "metrics.json")
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None}))
    return folder


def test_a_version_1_record_reads_with_its_gb_keys_as_gib(old_run: Path):
    record = run_record.read(old_run)
    assert record.version == 1 and record.status == "completed" and record.backend == "peft"
    assert record.memory.after_training.cpu_peak_rss_gib == 1.428
    assert record.value("memory.after_load.cpu_peak_rss_gib") == 1.428
    assert record.steps == 2 and record.tokens.non_padding_seen == 244 and record.model.name == "smollm2"
    dumped = record.dump()
    assert dumped["memory"]["after_training"] == {"cpu_peak_rss_gib": 1.428}
    assert "version" not in dumped  # an old record is not made to claim a version it was not written by
    assert set(dumped) == set(json.loads(FIXTURE.read_text()))


def test_every_compared_path_is_a_field_of_the_record_and_set_in_a_real_run(old_run: Path):
    record = run_record.read(old_run)
    for path in [*FAIRNESS.values(), *REPORT_PATHS]:
        assert run_record.has_path(path), path
    # the fixture predates --batching (and the trainer's packing strategy it sets) and --eval-steps; a current run
    # records them, which tests/e2e/test_end_to_end.py checks on real runs of both backends
    added_since = {"config.batching", "training_args.packing_strategy", "config.eval_steps"}
    assert [path for path in FAIRNESS.values() if record.value(path) is None and path not in added_since] == []
    assert not run_record.has_path("memory.after_training.cpu_peak_rss_gb")  # old names only read, never asked


def test_readers_get_the_old_record_through_the_typed_record(old_run: Path):
    run = load_run(old_run)
    assert run.label == "peft" and run.get("data.hash") == json.loads(FIXTURE.read_text())["data"]["hash"]
    info = read_run(old_run)  # no config.yaml: everything comes from metrics.json
    assert (info.load_in_4bit, info.dtype, info.backend) == (False, "bfloat16", "peft")  # the CPU had native bf16
    assert Path(info.base).name == Path(run.get("model.path")).name
    assert run_base_model(old_run).name == Path(run.get("model.path")).name


def test_a_new_record_says_its_version_first_and_round_trips(tmp_path: Path):
    record = run_record.new("running", backend="unsloth", config={"r": 16}, eval_loss={"before": 2.5})
    run_record.write(tmp_path, record)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == {"version": run_record.RECORD_VERSION, "status": "running", "backend": "unsloth",
                       "eval_loss": {"before": 2.5}, "config": {"r": 16}}
    assert run_record.read(tmp_path) == record


def test_keys_a_newer_writer_added_are_kept(tmp_path: Path):
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "completed", "tracking": {"url": "x"},
                                                       "memory": {"after_load": {"npu_peak_gib": 3.0}}}))
    assert run_record.read(tmp_path).dump() == {"status": "completed", "tracking": {"url": "x"},
                                                 "memory": {"after_load": {"npu_peak_gib": 3.0}}}


def test_a_broken_record_is_a_clear_error_naming_file_and_field(tmp_path: Path):
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "completed", "steps": "many"}))
    with pytest.raises(UsageError, match=r"metrics.json: field steps: Input should be a valid integer"):
        run_record.read(tmp_path)
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="expected a JSON object, got list"):
        run_record.read(tmp_path)
    assert run_record.read(tmp_path / "nowhere") is None


def test_config_yaml_comes_before_metrics_json_for_every_reader(old_run: Path):
    (old_run / "config.yaml").write_text("model: llama-3.1-8b\nload_in_4bit: true\ndtype: float32\n")
    recorded = run_record.recorded_model(old_run)
    assert (recorded.name, recorded.load_in_4bit, recorded.dtype, recorded.backend) == (
        "llama-3.1-8b", True, "float32", "peft")
    assert recorded.candidates() == [json.loads(FIXTURE.read_text())["model"]["path"], "llama-3.1-8b"]
    info = read_run(old_run)
    assert (info.load_in_4bit, info.dtype) == (True, "float32")
    assert info.base == recorded.path  # the path it resolved to still exists: the most exact candidate wins
