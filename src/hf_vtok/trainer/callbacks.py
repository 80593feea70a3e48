"""Trainer callbacks and the resume helper shared by ``hf-vtok train-tokenizer`` and ``hf-vtok train-mllm``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from transformers import TrainerCallback

from ..utils.validation import check_float


class WallTimeCallback(TrainerCallback):
    """Adds ``wall_seconds`` to every log entry: the training time of the run so far, summed over its resumed segments
    (a resumed segment starts from the last ``wall_seconds`` of the checkpoint's log history; time after a run's last
    log before it was killed is not counted). ``recipe.json`` reports the last value, so a checkpoint says how long it
    took to train even when it was trained across sessions."""

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.monotonic()
        self._offset = None  # read at the first log: Trainer loads a resumed run's history after on_train_begin

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.log_history:
            return
        if self._offset is None:
            earlier = [entry["wall_seconds"] for entry in state.log_history[:-1] if "wall_seconds" in entry]
            self._offset = max(earlier, default=0.0)
        state.log_history[-1]["wall_seconds"] = round(self._offset + time.monotonic() - self._start, 1)


def wall_seconds(log_history: Iterable[dict]) -> float | None:
    """The last ``wall_seconds`` that :class:`WallTimeCallback` logged (None when it did not run)."""
    values = [entry["wall_seconds"] for entry in log_history if "wall_seconds" in entry]
    return values[-1] if values else None


class TimeBudgetCallback(TrainerCallback):
    """Stops training once this segment has trained ``seconds`` (``--max_train_seconds``), with a checkpoint when the
    run keeps checkpoints, so that a session with a fixed time (a lent GPU, a CPU session) ends with an exported model
    instead of a killed one; ``--resume`` then goes on towards ``max_steps``. The step reached is the run's
    ``global_step`` in ``recipe.json``."""

    def __init__(self, seconds: float):
        self.seconds = check_float("max_train_seconds", seconds, minimum=0.0, strict_minimum=True)
        self.stopped_at = None  # the global step at which the budget ran out

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self._start >= self.seconds and state.global_step < state.max_steps:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
            self.stopped_at = state.global_step


def run_callbacks(training_args) -> list[TrainerCallback]:
    """The callbacks of every hf_vtok training run: the wall time, and the time budget when one is set."""
    callbacks = [WallTimeCallback()]
    if getattr(training_args, "max_train_seconds", None) is not None:
        callbacks.append(TimeBudgetCallback(training_args.max_train_seconds))
    return callbacks


def time_budget_stop(trainer) -> int | None:
    """The step at which ``--max_train_seconds`` stopped ``trainer`` (None: it was not stopped by it)."""
    return next((cb.stopped_at for cb in trainer.callback_handler.callbacks if isinstance(cb, TimeBudgetCallback)), None)


__all__ = ["TimeBudgetCallback", "WallTimeCallback", "run_callbacks", "time_budget_stop", "wall_seconds"]


def finished_checkpoint(training_args) -> Path | None:
    """The checkpoint ``training_args`` resume from when it already reached ``max_steps`` (nothing is left to train,
    only to export), else None."""
    from transformers.trainer_utils import get_last_checkpoint

    resume = training_args.resume
    if not resume:
        return None
    checkpoints = Path(training_args.output_dir) / "checkpoints"
    folder = get_last_checkpoint(str(checkpoints)) if resume is True and checkpoints.is_dir() else resume
    state = Path(folder) / "trainer_state.json" if folder else None
    if state is None or not state.is_file():
        return None
    return Path(folder) if json.loads(state.read_text())["global_step"] >= training_args.max_steps else None


def train_or_load_finished(trainer, training_args):
    """``trainer.train(resume_from_checkpoint=...)``, or, when the checkpoint already reached ``max_steps``, its
    weights and state loaded as they are (returns None): transformers, resuming mid-epoch at ``max_steps``, trains
    one more step, so exporting a finished run with ``--resume`` would ship another model than its checkpoint."""
    finished = finished_checkpoint(training_args)
    if finished is None:
        return trainer.train(resume_from_checkpoint=training_args.resume)
    from transformers import TrainerState

    trainer._load_from_checkpoint(str(finished))
    trainer.state = TrainerState.load_from_json(str(finished / "trainer_state.json"))
    return None
