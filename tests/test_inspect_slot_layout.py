"""training/inspect_slot_layout.py: what a SlotQFormer training checkpoint's slots and layout know.

Properties checked: its layout colour error is the model's own layout colour loss on the same scenes (on the patch
grid, and on a finer layout grid), its background share is the share of cells of each image's most common
slot-attention winner, the picture of the image's own grid colours is scored as computed by hand and far above an
untrained layout's, the slot maps' FG-ARI is hf-vtok eval's and below the patch grid's ceiling, the picture and inspect.json are written, and a folder without a config is refused in one line
with exit code 2.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_vtok.models.slot_qformer.configuration_slot_qformer import SlotQFormerConfig, tiny_decoder_config
from hf_vtok.models.slot_qformer.modeling_slot_qformer import SlotQFormerForPreTraining

torch.set_num_threads(1)
SCRIPT = Path(__file__).resolve().parents[1] / "training" / "inspect_slot_layout.py"


def _script():
    spec = importlib.util.spec_from_file_location("inspect_slot_layout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    decoder = tiny_decoder_config()
    decoder["layout_channels"] = 4
    decoder["unet"]["in_channels"] = 7
    config = SlotQFormerConfig.tiny(decoder_config=decoder, contrastive_loss_weight=0.0, text_generation_loss_weight=0.0,
                                    layout_loss_weight=1.0, layout_colour_loss_weight=1.0,
                                    vision_position_embedding=True)  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("inspect") / "checkpoint"
    SlotQFormerForPreTraining(config).save_pretrained(folder)
    return folder


def test_the_inspection_measures_what_the_model_trains_on(checkpoint, tmp_path, capsys):
    script = _script()
    assert script.main([str(checkpoint), "--out", str(tmp_path), "--num-images", "8"]) == 0
    results = json.loads((tmp_path / "inspect.json").read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == results
    assert (tmp_path / "layout.png").stat().st_size > 1000
    model = SlotQFormerForPreTraining.from_pretrained(checkpoint).eval()
    images, masks = script.scenes_tensor("flat", 8, 998, model.config.image_size)
    mean = torch.tensor(model.config.image_mean)[:, None, None]
    std = torch.tensor(model.config.image_std)[:, None, None]
    with torch.no_grad():
        output = model(pixel_values=(images - mean) / std)
    assert results["flat"]["layout_colour_mse"] == pytest.approx(float(output.loss_layout_colour), rel=1e-4)
    winners = output.assignments.argmax(dim=1)
    expected = float((winners == winners.mode(dim=1).values[:, None]).float().mean())
    assert results["flat"]["background_share"] == pytest.approx(expected)
    assert -10 < results["flat"]["centroid_r2_slots"] <= 1 and "centroid_r2_slots" not in results["textured"]
    # FG-ARI of the winners as `hf-vtok eval` scores a slot map (nearest upsampling of the patch grid), and the grid's
    # ceiling far above an untrained model's grouping
    from PIL import Image

    from hf_vtok.evaluation.metrics import foreground_ari

    side = model.config.image_size // model.config.vision_patch_size
    size = model.config.image_size
    maps = np.stack([np.asarray(Image.fromarray(w.reshape(side, side).numpy().astype(np.int32)).resize((size, size), Image.Resampling.NEAREST))
                     for w in winners])  # fmt: skip
    assert results["flat"]["fg_ari"] == pytest.approx(float(np.nanmean(foreground_ari(masks, maps))), abs=0.02)
    assert results["flat"]["patch_oracle_fg_ari"] > 0.8 > results["flat"]["fg_ari"]


def test_a_folder_without_a_config_is_refused_in_one_line(tmp_path, capsys):
    assert _script().main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "config.json" in printed[0]


def test_a_finer_broadcast_layout_is_measured_on_its_own_grid(tmp_path):
    decoder = tiny_decoder_config()
    decoder.update(layout_channels=4, layout_resolution=16)
    decoder["conditioner"]["layout_type"] = "broadcast"
    decoder["unet"]["in_channels"] = 7
    config = SlotQFormerConfig.tiny(decoder_config=decoder, contrastive_loss_weight=0.0, text_generation_loss_weight=0.0,
                                    layout_loss_weight=1.0, layout_colour_loss_weight=1.0)  # fmt: skip
    torch.manual_seed(0)
    SlotQFormerForPreTraining(config).save_pretrained(tmp_path / "checkpoint")
    script = _script()
    assert script.main([str(tmp_path / "checkpoint"), "--out", str(tmp_path / "out"), "--num-images", "8"]) == 0
    flat = json.loads((tmp_path / "out" / "inspect.json").read_text())["flat"]
    model = SlotQFormerForPreTraining.from_pretrained(tmp_path / "checkpoint").eval()
    images, _ = script.scenes_tensor("flat", 8, 998, model.config.image_size)
    mean = torch.tensor(model.config.image_mean)[:, None, None]
    std = torch.tensor(model.config.image_std)[:, None, None]
    with torch.no_grad():
        output = model(pixel_values=(images - mean) / std)
    assert flat["layout_colour_mse"] == pytest.approx(float(output.loss_layout_colour), rel=1e-4)
    # the image's own 16 x 16 colours, resized back: far closer to the image than an untrained layout's
    grid = torch.nn.functional.adaptive_avg_pool2d(images, 16)
    picture = torch.nn.functional.interpolate(grid, size=images.shape[-2:], mode="bilinear", align_corners=False)
    expected = (10 * torch.log10(1 / ((picture - images) ** 2).mean(dim=(1, 2, 3)))).mean()
    assert flat["grid_thumbnail_psnr"] == pytest.approx(float(expected), rel=1e-4)
    assert flat["grid_thumbnail_psnr"] > flat["layout_psnr"] + 3
