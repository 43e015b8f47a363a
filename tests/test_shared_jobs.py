"""Jobs that several modules need, each done in one place: model names to paths, the NF4 setting, atomic
writes, relative loss differences, the system prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llama_lora.atomic_files import replaced, write_text
from llama_lora.data.formats import with_system
from llama_lora.model.assets import model_path, smollm2_dir
from llama_lora.model.quantization import nf4_config
from llama_lora.run.compare import relative_differences


def test_model_names_resolve_to_the_embedded_folder_an_alias_s_hub_id_or_themselves():
    assert model_path("smollm2") == str(smollm2_dir())
    assert model_path("llama-3.1-8b-instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    assert model_path("/models/mine") == "/models/mine"


def test_nf4_is_double_quantized_and_packed_into_the_compute_dtype_only_for_fsdp():
    plain, fsdp = nf4_config(torch.bfloat16), nf4_config(torch.bfloat16, fsdp=True)
    assert (plain.load_in_4bit, plain.bnb_4bit_quant_type, plain.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert plain.bnb_4bit_compute_dtype == torch.bfloat16 and plain.bnb_4bit_quant_storage == torch.uint8
    assert fsdp.bnb_4bit_quant_storage == torch.bfloat16


def test_a_replaced_file_appears_whole_or_not_at_all(tmp_path: Path):
    target = tmp_path / "plot.png"
    write_text(target, "old")
    with pytest.raises(RuntimeError), replaced(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path  # writers that go by the suffix still can
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    with replaced(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_relative_differences_are_over_shared_steps_where_the_reference_is_not_zero():
    steps, diffs = relative_differences({1: 2.0, 2: 0.0, 3: 1.0, 4: 5.0}, {1: 2.2, 2: 1.0, 3: 0.9})
    assert steps == [1, 3] and diffs == pytest.approx([0.1, 0.1])


def test_a_system_prompt_is_added_only_to_conversations_without_one():
    user = [{"role": "user", "content": "hi"}]
    assert with_system(user, "be brief") == [{"role": "system", "content": "be brief"}, *user]
    own = [{"role": "system", "content": "mine"}, *user]
    assert with_system(own, "be brief") == own and with_system(user, None) == user
