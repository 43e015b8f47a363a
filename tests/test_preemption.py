"""What a SIGTERM does in each phase of a run, on the real signal handler and the trainer's own state and control
objects, in this process: during a step the step finishes and is checkpointed; during an evaluation the
evaluation finishes and its step is checkpointed; after a step's last hook no further batch is taken; before and
after training the model's next forward pass raises Interrupted; the last step is always checkpointed. The
messages say what happens. (tests/e2e/test_reliability.py signals real training runs in each phase.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerControl, TrainerState

from llama_lora.train.preemption import AFTER_TRAINING, BEFORE_TRAINING, SAVING, GracefulStop, Interrupted


@pytest.fixture
def stop():
    """The run's signal handling, installed as the pipeline installs it (and the test runner's handlers back after)."""
    handling = GracefulStop()
    handling.install()
    yield handling
    handling.release()


def state(step: int, max_steps: int = 6) -> TrainerState:
    return TrainerState(global_step=step, max_steps=max_steps)


def sigterm(capsys) -> str:
    """Send this process a SIGTERM; returns what the handler printed."""
    os.kill(os.getpid(), signal.SIGTERM)
    return capsys.readouterr().err


def test_during_a_step_the_step_finishes_then_is_checkpointed_and_training_stops(stop, capsys):
    stop.on_train_begin(None, state(0), TrainerControl())
    assert "SIGTERM received: finishing the current step, then saving a checkpoint of it" in sigterm(capsys)
    control = stop.on_step_end(None, state(3), TrainerControl())
    assert (control.should_save, control.should_training_stop, stop.stopped_at) == (True, True, 3)


def test_during_an_evaluation_it_finishes_then_its_step_is_checkpointed_without_another_step(stop, capsys):
    stop.on_train_begin(None, state(0), TrainerControl())
    control = TrainerControl(should_evaluate=True)  # as the trainer's flow callback decides for step 2
    control = stop.on_step_end(None, state(2), control)
    assert not control.should_training_stop
    said = sigterm(capsys)  # the evaluation is running
    assert "during the evaluation at step 2: finishing it, then saving a checkpoint of step 2 and stopping, " \
           "without training another step" in said
    control = stop.on_evaluate(None, state(2), control)
    assert (control.should_save, control.should_training_stop, stop.stopped_at) == (True, True, 2)


def test_while_a_checkpoint_is_written_training_stops_on_that_checkpoint_without_writing_another(stop, capsys):
    stop.on_train_begin(None, state(0), TrainerControl())
    control = stop.on_step_end(None, state(4), TrainerControl(should_save=True))
    sigterm(capsys)
    control = stop.on_save(None, state(4), control)
    assert (control.should_training_stop, stop.stopped_at, stop.saved_step) == (True, 4, 4)
    assert not control.should_save  # it is on disk already


def test_after_a_steps_last_hook_no_batch_is_taken_and_the_step_is_checkpointed_at_the_epochs_end(stop, capsys):
    stop.on_train_begin(None, state(0), TrainerControl())
    control = stop.on_step_end(None, state(2), TrainerControl())
    sigterm(capsys)  # after every hook of step 2: the trainer asks for the next batches
    assert stop.requested()  # the trainer then takes no batch (the next test)
    control = stop.on_epoch_end(None, state(2), control)
    assert (control.should_save, control.should_training_stop, stop.stopped_at) == (True, True, 2)


def test_the_trainer_takes_no_batch_once_a_stop_is_requested_or_the_planned_training_is_done(
        smollm2_tokenizer, tmp_path):
    from llama_lora.options.config import Machine, TrainConfig, resolve
    from llama_lora.train.trainer import build_sft_config, make_trainer, to_dataset

    cfg = resolve(TrainConfig(model="smollm2", dtype="float32", max_steps=4, batch_size=1), "peft", Machine(cuda=False))
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [-100, 2, 3, 4]} for _ in range(8)]
    trainer = make_trainer(tiny_model(), smollm2_tokenizer, build_sft_config(cfg, tmp_path), to_dataset(rows), None,
                           [], own_cpu_loss=False)
    trainer.state = TrainerState(global_step=1, max_steps=4)

    def next_batches() -> list:
        return trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 1, torch.device("cpu"))[0]

    assert len(next_batches()) == 1
    trainer.stop_requested = lambda: True  # a signal arrived (GracefulStop.requested)
    assert next_batches() == []
    trainer.stop_requested = lambda: False
    trainer.training_done = True  # resumed from a checkpoint of the run's last step
    assert next_batches() == []
    trainer.training_done = False
    trainer.state.global_step = 4  # --max-steps reached
    assert next_batches() == []


def test_the_last_step_is_always_checkpointed_even_with_save_steps_0(stop):
    stop.on_train_begin(None, state(0), TrainerControl())
    assert not stop.on_step_end(None, state(5), TrainerControl()).should_save
    assert stop.on_step_end(None, state(6), TrainerControl()).should_save


def tiny_model() -> LlamaForCausalLM:
    """A real (randomly initialised) Llama causal LM small enough to run in milliseconds."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("phase, activity, said", [
    (BEFORE_TRAINING, "loading the model", "while loading the model: stopping before training starts (nothing "
                                           "trained is lost)"),
    (AFTER_TRAINING, "answering the sample prompts", "while answering the sample prompts: stopping that now; "
                                                      "training is complete and checkpointed, and --resume finishes "
                                                      "the run without training"),
])
def test_before_and_after_training_the_next_forward_pass_raises_interrupted(stop, capsys, phase, activity, said):
    model = tiny_model()
    ids = torch.tensor([[1, 2, 3]])
    checkpoint = Path("checkpoints/checkpoint-6")
    stop.step = 6
    with stop.aborting(model, phase, activity, checkpoint):
        model(ids)  # no signal yet: it runs
        assert said in sigterm(capsys)
        with pytest.raises(Interrupted) as raised:
            model.generate(ids, max_new_tokens=5, do_sample=False)
    assert (raised.value.step, raised.value.checkpoint, raised.value.during) == (6, checkpoint, phase)
    assert str(raised.value).startswith("stopped on SIGTERM ")
    model(ids)  # the hook is gone after the block


def test_while_the_finished_run_is_saved_it_says_so_and_does_not_stop(stop, capsys):
    stop.enter(SAVING, "saving the adapter and the run folder")
    assert "while saving the adapter and the run folder: finishing that first" in sigterm(capsys)
    assert stop.requested() and stop.stopped_at is None
