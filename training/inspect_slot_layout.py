#!/usr/bin/env python
"""What a SlotQFormer training checkpoint's slots and decoder layout know, on *validation* scenes (seed 998; never the
held-out seed 999 that `hf-vtok eval` reports). Works on stage-1 checkpoints, before any held-out evaluation exists.

    python training/inspect_slot_layout.py RUN/checkpoints/checkpoint-1000 --out inspect_out [--num-images 96]

Prints one JSON line and writes `inspect.json` and `layout.png` to --out:
- `centroid_r2_slots` / `centroid_r2_local`: cross-validated R² of a ridge regression from a slot's embedding (and
  from the conditioner's local embedding of it) to the centroid of its slot-attention map, over the slots that win
  more than two patches (flat scenes). Near 0 or below: the slots do not say where their object is.
- `background_share`: the share of cells the most common attention winner of each image takes.
- `fg_ari` beside `patch_oracle_fg_ari`: FG-ARI of the slot attention's winners, and of the best map on the same
  patch grid (each patch given the object covering most of it): what the grid allows, so what is left is grouping.
- `layout_colour_mse` beside `one_colour_mse`: the layout's first three channels against the image's colours on the
  layout's grid (the patch colours unless `layout_resolution`), and one colour per scene (only meaningful with
  `layout_colour_loss_weight`); `layout_agreement`: the share of cells whose layout winner is the attention winner
  (the attention's maps resized to the layout's grid).
- `layout_psnr` beside `grid_thumbnail_psnr`: the layout's colour channels, bilinearly resized to the image, as a
  picture (what the layout alone says of the scene), and the image's own colours on the same grid resized the same way
  (the best such a picture can do).
- `layout.png`: per scene (flat, then textured) the image, the layout's colour channels, the layout's winners and the
  slot attention's winners.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch


def scenes_tensor(style: str, count: int, seed: int, image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """`[count, 3, S, S]` in [0, 1] and the instance masks `[count, S, S]`: the scenes `hf-vtok eval` would draw for
    ``seed``."""
    from hf_vtok.evaluation.quality import load_scenes

    scenes = load_scenes(style, count, image_size, seed)
    return torch.from_numpy(scenes.images).permute(0, 3, 1, 2), scenes.masks


def discovery_scores(winners: torch.Tensor, masks: np.ndarray, side: int) -> dict:
    """FG-ARI of the slot attention's winners (`[B, side²]`, each patch's cell as `grid_partition` cuts the image)
    beside the best any map on that patch grid can score (`patch_oracle_labels`)."""
    from hf_vtok.evaluation.baselines import grid_partition, patch_oracle_labels
    from hf_vtok.evaluation.metrics import foreground_ari

    cells = grid_partition(masks.shape[-1], side)
    maps = winners.numpy()[:, cells]
    return {"fg_ari": float(np.nanmean(foreground_ari(masks, maps))),
            "patch_oracle_fg_ari": float(np.nanmean(foreground_ari(masks, patch_oracle_labels(masks, side))))}


def grid_picture_psnr(cells: torch.Tensor, images: torch.Tensor) -> float:
    """Mean PSNR (dB, `hf-vtok eval`'s metric) of colours on a square grid (`[B, cells, 3]` in [0, 1]) resized
    bilinearly to ``images`` (`[B, 3, H, W]`)."""
    from hf_vtok.evaluation.metrics import psnr

    side = math.isqrt(cells.shape[1])
    grid = cells.transpose(1, 2).reshape(cells.shape[0], 3, side, side)
    picture = torch.nn.functional.interpolate(grid, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return float(psnr(picture.clamp(0, 1).permute(0, 2, 3, 1).numpy(), images.permute(0, 2, 3, 1).numpy()).mean())


def centroid_r2(features: torch.Tensor, centroids: torch.Tensor) -> float:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_score

    return float(cross_val_score(RidgeCV(alphas=[0.1, 1.0, 10.0]), features.numpy(), centroids.numpy(), cv=4).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a SlotQFormerForPreTraining folder (a Trainer checkpoint or training_model/)")
    parser.add_argument("--out", required=True, help="output folder for inspect.json and layout.png")
    parser.add_argument("--num-images", type=int, default=96, help="validation scenes for the regressions (default 96)")
    parser.add_argument("--seed", type=int, default=998, help="scene seed (default 998, the validation seed)")
    args = parser.parse_args(argv)
    if args.num_images < 8:
        print(f"inspect_slot_layout: --num-images must be at least 8 (4 folds of the regression), got {args.num_images}")
        return 2
    if not (Path(args.checkpoint) / "config.json").is_file():
        print(f"inspect_slot_layout: {args.checkpoint!r} holds no config.json: give a checkpoint or training_model folder")
        return 2

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_vtok.models.slot_qformer.modeling_slot_qformer import SlotQFormerForPreTraining

    model = SlotQFormerForPreTraining.from_pretrained(args.checkpoint).eval()
    config = model.config
    side = config.image_size // config.vision_patch_size
    layout_side = int(model.conditioner.config.layout_grid[0]) if model.conditioner.config.layout_grid else side
    mean = torch.tensor(config.image_mean)[:, None, None]
    std = torch.tensor(config.image_std)[:, None, None]
    results, shown = {"checkpoint": args.checkpoint, "num_images": args.num_images, "seed": args.seed}, []
    for style in ("flat", "textured"):
        images, masks = scenes_tensor(style, args.num_images, args.seed, config.image_size)
        pixel_values = (images - mean) / std
        with torch.no_grad():
            encoded = model.tokenizer.encode_slots(pixel_values)
            condition = model.conditioner(encoded.slot_embeddings)
        assignments = encoded.assignments  # [B, S, N]
        winners = assignments.argmax(dim=1)
        background = winners.mode(dim=1).values
        stats = {"background_share": float((winners == background[:, None]).float().mean()),
                 **discovery_scores(winners, masks, side)}
        if style == "flat":
            weights = assignments / assignments.sum(dim=-1, keepdim=True).clamp_min(1e-6)
            rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
            centroids = torch.stack([(weights * rows.flatten()).sum(-1), (weights * cols.flatten()).sum(-1)], dim=-1)
            keep = (assignments.sum(dim=-1) > 2).flatten()
            stats["centroid_r2_slots"] = centroid_r2(encoded.slot_embeddings.flatten(0, 1)[keep], centroids.flatten(0, 1)[keep])
            stats["centroid_r2_local"] = centroid_r2(condition.local_embeddings.flatten(0, 1)[keep], centroids.flatten(0, 1)[keep])
        if condition.layout_cells is not None:  # on the layout's grid (the patch grid unless layout_resolution)
            colours = model.layout_grid_colours(pixel_values)
            cells = condition.layout_cells[..., :3]
            stats["layout_colour_mse"] = float(((cells - colours) ** 2).mean())
            stats["one_colour_mse"] = float(((colours.mean(dim=1, keepdim=True) - colours) ** 2).mean())
            grid_winners = model.layout_grid_maps(assignments).argmax(dim=1)
            stats["layout_psnr"] = grid_picture_psnr(cells, images)
            stats["grid_thumbnail_psnr"] = grid_picture_psnr(colours, images)
            stats["layout_agreement"] = float((condition.layout_logits.argmax(dim=1) == grid_winners).float().mean())
        results[style] = stats
        for index in range(min(6, args.num_images)):
            layout = None if condition.layout_cells is None else condition.layout_cells[index, :, :3]
            layout_winners = None if condition.layout_logits is None else condition.layout_logits[index].argmax(dim=0)
            shown.append((images[index], layout, layout_winners, winners[index]))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inspect.json").write_text(json.dumps(results, indent=2) + "\n")
    figure, axes = plt.subplots(len(shown), 4, figsize=(8, 2 * len(shown)), squeeze=False)
    for row, (image, layout, layout_winners, slot_winners) in enumerate(shown):
        axes[row, 0].imshow(image.permute(1, 2, 0).numpy())
        if layout is not None:
            axes[row, 1].imshow(layout.reshape(layout_side, layout_side, 3).clamp(0, 1).numpy())
            axes[row, 2].imshow(layout_winners.reshape(layout_side, layout_side).numpy(), cmap="tab10", vmin=0, vmax=9)
        axes[row, 3].imshow(slot_winners.reshape(side, side).numpy(), cmap="tab10", vmin=0, vmax=9)
        for axis in axes[row]:
            axis.axis("off")
    for axis, title in zip(axes[0], ["image", "layout colours", "layout winner", "slot attention winner"]):
        axis.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "layout.png", dpi=60)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
