#!/usr/bin/env python
"""Check that data-parallel processes stay in sync (run it on a new cluster before a long training).

    accelerate launch --multi_gpu --num_processes 2 training/check_distributed_sync.py --out sync_check   # 2 CPU processes (gloo) without GPUs
    accelerate launch --num_processes 8 training/check_distributed_sync.py --out sync_check --device cuda

A tiny SlotQFormer trains with ``transformers.Trainer`` on every process, each on its own shard of the shapes world:

1. the contrastive (ITC) loss of stage 1 gathers the negatives of all processes: each rank evaluates it on its half
   of a fixed batch (eval mode, no sampling) and writes the value;
2. two stage-1 optimizer steps (DDP averages the gradients): each rank writes its weights;
3. two stage-2 steps, in which the residual VQ updates its EMA codebook from each rank's own data (DDP's buffer
   broadcast is switched off, so only the quantizer's own all-reduce can keep the codebooks equal): each rank writes
   its codebook and weights.

Rank ``r`` writes ``rank{r}.json`` (losses, fingerprints of the batches it saw) and ``rank{r}_stage{1,2}.safetensors``;
rank 0 also writes ``initial.safetensors`` and ``itc_batch.safetensors`` so that the single-process ITC loss of the
concatenated batch can be recomputed. ``compare(out)`` (``--compare``) checks the files: identical weights and
codebooks on every rank, different data, and the mean of the ranks' ITC losses equal to the single-process value.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch


def _fingerprint(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def build(seed: int = 0):
    """The tiny model, its collator and a fixed dataset (identical on every process)."""
    from hf_vtok.data import generate_shapes_dataset
    from hf_vtok.data.text_tokenizer import build_text_tokenizer
    from hf_vtok.mllm.processing_mllm import image_processor_for
    from hf_vtok.models.slot_qformer import SlotQFormerConfig, SlotQFormerForPreTraining
    from hf_vtok.trainer.tokenizer_trainer import TokenizerTrainingCollator

    torch.manual_seed(seed)
    model = SlotQFormerForPreTraining(SlotQFormerConfig.tiny())
    model.set_stage(1)
    processor = image_processor_for(model.config)
    text_tokenizer = build_text_tokenizer()
    collator = TokenizerTrainingCollator(
        processor, ["pixel_values", "input_ids", "attention_mask"], text_tokenizer=text_tokenizer, max_text_length=16
    )
    dataset = generate_shapes_dataset(16, image_size=64, style="flat", seed=seed, with_edits=False, progress=False)
    return model, collator, dataset


class RecordingCollator:
    """Collates like the wrapped collator and remembers a fingerprint of every batch (to show the ranks' data differ)."""

    def __init__(self, collator):
        self.collator = collator
        self.seen: list[str] = []

    def __call__(self, rows):
        batch = self.collator(rows)
        self.seen.append(_fingerprint(batch["pixel_values"]))
        return batch


def run(out: Path, steps: int, device: str) -> None:
    from accelerate import PartialState
    from safetensors.torch import save_file
    from transformers import Trainer, TrainingArguments

    import hf_vtok  # noqa: F401

    state = PartialState(cpu=device == "cpu")
    rank, world = state.process_index, state.num_processes
    torch.set_num_threads(1)
    model, collator, dataset = build()
    out.mkdir(parents=True, exist_ok=True)
    report = {"rank": rank, "world_size": world}

    # 1. gathered contrastive loss on this rank's half of a fixed batch
    fixed = collator([dataset[i] for i in range(2 * world)])
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "initial.safetensors"))
        save_file({k: v.contiguous() for k, v in fixed.items()}, str(out / "itc_batch.safetensors"))
    local = {k: v[2 * rank : 2 * rank + 2].to(state.device) for k, v in fixed.items()}
    model.to(state.device).eval()
    with torch.no_grad():
        report["itc_loss"] = float(model(**local).loss_contrastive)

    def arguments(stage: int) -> TrainingArguments:
        return TrainingArguments(
            output_dir=str(out / f"trainer_stage{stage}"), max_steps=steps, per_device_train_batch_size=2,
            learning_rate=1e-3, seed=0, data_seed=0, use_cpu=device == "cpu", report_to=[], save_strategy="no",
            logging_steps=1, disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
            ddp_broadcast_buffers=False, ddp_find_unused_parameters=True,
        )  # fmt: skip

    # 2. stage 1: DDP-averaged gradients
    recorder = RecordingCollator(collator)
    trainer = Trainer(model=model, args=arguments(1), train_dataset=dataset, data_collator=recorder)
    trainer.train()
    report["stage1_batches"] = list(recorder.seen)
    report["stage1_losses"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / f"rank{rank}_stage1.safetensors"))

    # 3. stage 2: the EMA codebook learns from each rank's own vectors, all-reduced inside the quantizer
    model.set_stage(2)
    recorder = RecordingCollator(collator)
    trainer = Trainer(model=model, args=arguments(2), train_dataset=dataset, data_collator=recorder)
    trainer.train()
    report["stage2_batches"] = list(recorder.seen)
    report["stage2_losses"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / f"rank{rank}_stage2.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=2))
    state.wait_for_everyone()


def compare(out: Path, world_size: int = 2, atol: float = 1e-6) -> dict:
    """Check the files of a run; returns a report dict and raises ``AssertionError`` on the first divergence."""
    from safetensors.torch import load_file

    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]
    result = {}
    for stage in (1, 2):
        states = [load_file(str(out / f"rank{r}_stage{stage}.safetensors")) for r in range(world_size)]
        initial = load_file(str(out / "initial.safetensors"))
        for name, tensor in states[0].items():
            for other in states[1:]:
                if not torch.allclose(tensor.float(), other[name].float(), atol=atol, rtol=0):
                    raise AssertionError(f"stage {stage}: {name} differs between ranks (max {float((tensor - other[name]).abs().max()):.3g})")
        moved = [name for name, tensor in states[0].items() if name in initial and tensor.is_floating_point()
                 and not torch.equal(tensor, initial[name])]
        result[f"stage{stage}_tensors_moved"] = len(moved)
        batches = [set(report[f"stage{stage}_batches"]) for report in reports]
        if any(batches[0] & other for other in batches[1:]):
            raise AssertionError(f"stage {stage}: two ranks saw the same batch; the check needs different data per rank")
    codebooks = [name for name in states[0] if "codebook" in name]
    result["codebook_tensors"] = codebooks
    result["itc_losses"] = [report["itc_loss"] for report in reports]
    result["itc_rank_mean"] = sum(result["itc_losses"]) / world_size
    return result


def single_process_itc(out: Path) -> float:
    """The ITC loss of the concatenated batch in one process (what the ranks' mean must equal)."""
    from safetensors.torch import load_file

    model, _, _ = build()
    model.load_state_dict(load_file(str(out / "initial.safetensors")))
    batch = load_file(str(out / "itc_batch.safetensors"))
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss_contrastive)


@dataclass
class SyncCheckArguments:
    out: str = field(metadata={"help": "folder for the per-rank files"})
    steps: int = 2
    device: Literal["cpu", "cuda"] = "cpu"
    compare: bool = field(default=False, metadata={"help": "only compare the files of a finished run"})


def main() -> None:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(SyncCheckArguments, description=__doc__.split("\n")[0]).parse_args_into_dataclasses()
    out = Path(args.out)
    if args.compare:
        result = compare(out, world_size=len(list(out.glob("rank*.json"))))
        result["itc_single_process"] = single_process_itc(out)
        print(json.dumps(result, indent=2))
        return
    run(out, args.steps, args.device)
    if int(os.environ.get("RANK", "0")) == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print(f"wrote per-rank files to {out}; check them with --compare")


if __name__ == "__main__":
    main()
