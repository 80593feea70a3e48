"""Trainer callbacks shared by ``hf-vtok train-tokenizer`` and ``hf-vtok train-mllm``."""

from __future__ import annotations

import time
from collections.abc import Iterable

from transformers import TrainerCallback


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


__all__ = ["WallTimeCallback", "wall_seconds"]
