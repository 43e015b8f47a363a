"""The forgetting check: cross-entropy on the bundled general-text sample, measured on the base model before training
and on the adapter being saved after it, recorded in metrics.json and read out in one line."""

from __future__ import annotations

import math

import pytest
import torch

from llama_lora.run import forgetting, run_record


@pytest.fixture(scope="module")
def base_model(smollm2_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def short_sample(smollm2_tokenizer) -> list[list[int]]:
    """The bundled passages cut to unequal lengths (12 and 40 tokens, ...), so a plain mean of per-passage losses and
    the token-weighted mean differ."""
    full = forgetting.tokenize(smollm2_tokenizer, 2048)
    return [ids[:length] for ids, length in zip(full, (12, 40, 20, 28))]


def manual_cross_entropy(model, sample: list[list[int]]) -> float:
    """Every predicted token's -log p(token | tokens before it), summed over all passages, over their count."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in sample:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            picked = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:]).unsqueeze(1))
            total -= picked.sum().item()
            count += len(ids) - 1
    return total / count


def test_the_bundled_sample_is_a_few_hundred_tokens_of_prose_in_four_passages(smollm2_tokenizer, llama3_tokenizer):
    assert len(forgetting.passages()) == 4
    for tokenizer in (smollm2_tokenizer, llama3_tokenizer):
        lengths = [len(ids) for ids in forgetting.tokenize(tokenizer, 2048)]
        assert 500 < sum(lengths) < 800 and min(lengths) > 100
    assert [len(ids) for ids in forgetting.tokenize(llama3_tokenizer, 50)] == [50] * 4  # cut to --max-seq-length


def test_cross_entropy_is_the_token_weighted_mean_of_next_token_losses(base_model, short_sample):
    measured = forgetting.cross_entropy(base_model, short_sample)
    assert measured == pytest.approx(manual_cross_entropy(base_model, short_sample), rel=1e-5)
    # the passages are of unequal length, so the mean of per-passage means would be another number
    per_passage = [forgetting.cross_entropy(base_model, [ids]) for ids in short_sample]
    assert abs(sum(per_passage) / len(per_passage) - measured) > 1e-3


def test_measuring_leaves_the_model_in_the_mode_it_was_in(base_model, short_sample):
    base_model.train()
    forgetting.cross_entropy(base_model, short_sample[:1])
    assert base_model.training
    base_model.eval()
    forgetting.cross_entropy(base_model, short_sample[:1])
    assert not base_model.training


def test_after_measures_the_adapter_being_saved_and_before_the_base(base_model, smollm2_tokenizer, short_sample,
                                                                     monkeypatch):
    """A new LoRA adds nothing (B = 0), so `before` is the base model's figure; the trained adapter's figure must be
    measured with the adapter active: measured with it disabled, `after` would equal `before`."""
    from peft import LoraConfig, get_peft_model

    monkeypatch.setattr(forgetting, "tokenize", lambda tokenizer, max_length: short_sample)
    model = get_peft_model(base_model, LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "v_proj"]))
    try:
        check = forgetting.before(model, smollm2_tokenizer, 2048)
        assert check.before == pytest.approx(manual_cross_entropy(base_model, short_sample), rel=1e-5)
        torch.manual_seed(0)
        with torch.no_grad():  # what training does to B
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.2)
        record = check.after(model)
        tuned = manual_cross_entropy(model, short_sample)
        assert record["after"] == pytest.approx(tuned, abs=1e-5)
        assert abs(tuned - record["before"]) > 0.01  # the adapter changes the figure by far more than its rounding
        assert record["perplexity_change"] == pytest.approx(math.exp(tuned - check.before) - 1, abs=1e-4)
        assert record["tokens"] == sum(len(ids) - 1 for ids in short_sample) and record["seconds"] >= 0
        assert record["sample"] == "data/general_text/botchan.txt"
        run_record.new("completed", forgetting=record)  # the typed record takes it as it is
    finally:
        model.unload()  # give the module's base model back without LoRA layers


@pytest.mark.parametrize(("before", "after", "reading"), [
    (3.0, 3.0, "unchanged"), (3.0, 3.0 + math.log(1.019), "unchanged"), (3.0, 3.0 + math.log(1.05), "rose slightly"),
    (3.0, 3.0 + math.log(1.2), "rose: some forgetting"), (3.0, 3.0 + math.log(1.5), "rose sharply"),
    (3.0, 3.0 + math.log(0.95), "fell"),
])
def test_the_reading_names_the_size_and_direction_of_the_perplexity_change(before, after, reading):
    assert forgetting.reading(before, after).startswith(reading)


def test_the_summary_line_reads_the_same_from_a_record_or_its_json():
    record = {"before": 3.8312, "after": 3.9, "perplexity_change": 0.0711, "reading": forgetting.reading(3.8312, 3.9)}
    line = forgetting.summary(record)
    assert line == ("3.8312 -> 3.9000 on general text (+7.1% perplexity): rose slightly: little forgetting of "
                    "general English")
    assert forgetting.summary(run_record.Forgetting(**record)) == line


@pytest.mark.slow
def test_a_trained_runs_record_holds_the_base_figure_before_and_the_adapters_after(trained_run):
    """Recomputed from the saved run folder in plain PEFT: metrics.json's `before` is the base model's (adapter
    disabled) and its `after` the saved adapter's; each is nearer its own recomputation than the other's, so a
    pipeline that measured `after` with the adapter off (or `before` on a trained adapter) fails here."""
    from llama_lora.use import inference

    recorded = run_record.read(trained_run).forgetting
    model, tokenizer = inference.load_tuned(inference.read_run(trained_run))
    sample = forgetting.tokenize(tokenizer, 2048)
    tuned = forgetting.cross_entropy(model, sample)
    with model.disable_adapter():
        base = forgetting.cross_entropy(model, sample)
    assert abs(recorded.after - tuned) < abs(recorded.after - base)
    assert abs(recorded.before - base) < abs(recorded.before - tuned)
    assert recorded.before == pytest.approx(base, abs=1e-3) and recorded.after == pytest.approx(tuned, abs=1e-3)
    summary = (trained_run.parent / "run.out").read_text()
    assert f"  forgetting  {forgetting.summary(recorded)}" in summary
