"""Two CPU processes launched with ``accelerate`` stay in sync (training/check_distributed_sync.py).

A tiny SlotQFormer trains with ``transformers.Trainer`` under DDP on 2 gloo processes, each on its own shard of the
shapes world. Checked from the per-rank files: identical weights on both ranks after the stage-1 and stage-2 steps;
identical EMA codebooks after stage 2 although DDP's buffer broadcast is off and the ranks saw different batches
(only the quantizer's all-reduce keeps them equal — a run with that all-reduce disabled diverges, see
docs/training.md); and the gathered contrastive loss: the mean of the two ranks' ITC losses equals the
single-process ITC loss of the concatenated batch.

Note: ``accelerate launch --cpu --num_processes 2`` starts ONE process in accelerate 1.x (multi-CPU needs mpirun);
``--multi_gpu`` on a machine without GPUs starts the processes through torch.distributed.run, and the script's
``PartialState(cpu=True)`` makes them use gloo on the CPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "check_distributed_sync.py"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_distributed_sync", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script defines its arguments
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "MASTER_PORT": "29517"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        str(SCRIPT), "--out", str(tmp_path), "--steps", "2",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "rank0.json").is_file() and (tmp_path / "rank1.json").is_file(), "two processes did not run"

    checker = _load_checker()
    report = checker.compare(tmp_path, world_size=2)  # raises on any weight / codebook divergence or shared batch
    assert report["stage1_tensors_moved"] > 0 and report["stage2_tensors_moved"] > 0
    assert any(name.endswith("codebooks.0.weight") for name in report["codebook_tensors"])
    first, second = report["itc_losses"]
    assert first != second  # each rank scores its own rows against the gathered batch
    assert report["itc_rank_mean"] == pytest.approx(checker.single_process_itc(tmp_path), abs=1e-5)
