"""Kill a training run mid-way and resume it: the final weights equal those of an uninterrupted run.

Two runs of the same tiny DDT recipe (8 steps, a checkpoint every 2) start as subprocesses: the reference runs to
the end, the other is slowed down and SIGKILLed once ``checkpoint-4`` is complete, then resumed with
``--resume`` (``resume_from_checkpoint=True``). Deterministic settings: CPU, one thread, ``torch.use_deterministic_algorithms``
(what ``TrainingArguments(full_determinism=True)`` sets); the model's random draws (timesteps, noise, condition
dropout, dead-code revival) come from the global torch RNG, which Trainer saves in ``rng_state.pth`` and restores.

Checkpoints hold the weights as safetensors; the only pickled files are Trainer's own states (optimizer, scheduler,
RNG, training arguments). Every ``torch.load`` of the resumed run is recorded: each one uses ``weights_only=True``
(``training_args.bin`` is written but never loaded).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r'''
import json, os, sys, time
import torch
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
loads = []
original_load = torch.load
def recording_load(*args, **kwargs):
    loads.append({"file": os.path.basename(str(args[0])), "weights_only": kwargs.get("weights_only")})
    return original_load(*args, **kwargs)
torch.load = recording_load
if os.environ.get("SLOW_STEP"):
    import transformers
    step = transformers.Trainer.training_step
    def slow(self, *a, **k):
        time.sleep(float(os.environ["SLOW_STEP"]))
        return step(self, *a, **k)
    transformers.Trainer.training_step = slow
from hf_vtok.trainer.arguments import parse_tokenizer_arguments
from hf_vtok.trainer.tokenizer_trainer import train_tokenizer
resume = ["--resume"] if sys.argv[2] == "resume" else []
train_tokenizer(*parse_tokenizer_arguments([
    "--recipe", "ddt_tiny", "--output_dir", sys.argv[1], "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2",
    "--num_train_images", "32", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--warmup_steps", "2", *resume]))
json.dump(loads, open(os.path.join(sys.argv[1], "torch_loads.json"), "w"))
'''


def _start(driver: Path, out: Path, mode: str, slow: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if slow:
        env["SLOW_STEP"] = str(slow)
    return subprocess.Popen([sys.executable, str(driver), str(out), mode], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    first = _start(driver, reference, "fresh")
    second = _start(driver, interrupted, "fresh", slow=0.5)
    marker = interrupted / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 180
    while not marker.is_file():
        assert second.poll() is None, second.stderr.read()[-3000:]
        assert time.time() < deadline, "checkpoint-4 never appeared"
        time.sleep(0.1)
    second.send_signal(signal.SIGKILL)
    second.wait()
    assert not (interrupted / "training_model").exists()  # it really died before the end
    checkpoints = sorted(p.name for p in (interrupted / "checkpoints").iterdir())
    assert "checkpoint-8" not in checkpoints and "checkpoint-4" in checkpoints

    # weights as safetensors; pickles only for Trainer's own states
    files = {p.name for p in (interrupted / "checkpoints" / "checkpoint-4").iterdir()}
    assert "model.safetensors" in files and "pytorch_model.bin" not in files
    assert {name for name in files if name.endswith((".bin", ".pt", ".pth"))} <= {
        "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}

    resumed = _start(driver, interrupted, "resume")
    assert resumed.wait(timeout=240) == 0, resumed.stderr.read()[-3000:]
    assert first.wait(timeout=240) == 0, first.stderr.read()[-3000:]
    state = json.loads((interrupted / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    a = load_file(str(reference / "training_model" / "model.safetensors"))
    b = load_file(str(interrupted / "training_model" / "model.safetensors"))
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, different[:5]
    losses = lambda folder: [e["loss"] for e in json.loads(
        (folder / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert losses(reference) == losses(interrupted)

    # recipe.json's wall time sums both segments: the killed one slept 0.5 s in each of its >= 4 logged steps
    history = json.loads((interrupted / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())["log_history"]
    walls = [entry["wall_seconds"] for entry in history if "wall_seconds" in entry]
    assert walls == sorted(walls) and len(walls) >= 8
    wall_at = {entry["step"]: entry["wall_seconds"] for entry in history if "wall_seconds" in entry}
    assert wall_at[4] >= 2.0 and wall_at[5] > wall_at[4], wall_at  # the resumed segment continues the count
    assert json.loads((interrupted / "recipe.json").read_text())["wall_seconds"] >= wall_at[8]

    loads = json.loads((interrupted / "torch_loads.json").read_text())
    assert {entry["file"] for entry in loads} >= {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
    assert all(entry["weights_only"] is True for entry in loads), loads

    # resuming the finished run only exports its last checkpoint again: the same weights, no step past max_steps
    again = _start(driver, interrupted, "resume")
    assert again.wait(timeout=240) == 0, again.stderr.read()[-3000:]
    c = load_file(str(interrupted / "training_model" / "model.safetensors"))
    assert all(torch.equal(b[name], c[name]) for name in b)
    assert not (interrupted / "checkpoints" / "checkpoint-9").exists()
