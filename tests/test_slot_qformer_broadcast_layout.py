"""The Slot Q-Former's spatial broadcast layout (``layout_type="broadcast"``), a layout grid finer than the patch grid
(``decoder_config.layout_resolution``) and starting a changed architecture from a run's weights (``warm_start_from``).

Properties checked: a broadcast slot paints a content of its own at every cell (its cells are the softmax-weighted sum of
the (slot, cell) contents), and it can draw an outline that one Gaussian bump per slot cannot (a ring, fitted from the
same free slot embeddings); on a finer grid the layout losses compare with the image's colours area-averaged onto it
and with the slot attention's maps resized to it (still distributions over the slots); a warm start copies every tensor
whose name and shape match, leaves the new head at its initialisation and names it, and refuses a folder of another
model type, one without weights, and being given together with ``init_from``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_slot_qformer_layout import (  # the layout tests' scenes of one square and their layout width
    LAYOUT_CHANNELS,
    _images,
)

from hf_vtok.models.slot_qformer.configuration_slot_qformer import SlotQFormerConfig, tiny_decoder_config
from hf_vtok.models.slot_qformer.modeling_slot_qformer import SlotQFormerForPreTraining
from hf_vtok.models.slot_qformer.modeling_slot_qformer_decoder import SlotQFormerDecoderConditioner

torch.set_num_threads(1)


def _config(layout_type: str = "broadcast", layout_resolution: int = 0, **overrides) -> SlotQFormerConfig:
    decoder = tiny_decoder_config()
    decoder["layout_channels"] = LAYOUT_CHANNELS
    decoder["layout_resolution"] = layout_resolution
    decoder["conditioner"]["layout_type"] = layout_type
    decoder["unet"]["in_channels"] = 3 + LAYOUT_CHANNELS  # pixel space in the tiny preset
    values = {"contrastive_loss_weight": 0.0, "text_generation_loss_weight": 0.0, "layout_loss_weight": 1.0}
    return SlotQFormerConfig.tiny(decoder_config=decoder, **{**values, **overrides})


def _conditioner(layout_type: str, num_slots: int = 5, grid: int = 3) -> SlotQFormerDecoderConditioner:
    torch.manual_seed(0)
    return SlotQFormerDecoderConditioner(slot_dim=16, num_slots=num_slots, hidden_size=32, num_heads=2,
                                         global_embedding_dim=8, noise_level_embedding=False,
                                         layout_channels=LAYOUT_CHANNELS, layout_grid=(grid, grid), layout_size=12,
                                         layout_type=layout_type, layout_hidden_size=64)  # fmt: skip


def test_a_broadcast_layout_starts_as_the_gaussian_layout_of_the_same_weights():
    torch.manual_seed(0)
    model = SlotQFormerForPreTraining(_config("broadcast")).eval()  # the training model's own initialisation
    broadcast = model.conditioner
    gaussian = SlotQFormerDecoderConditioner(**{**broadcast.config, "layout_type": "gaussian"}).eval()
    missing, unexpected = gaussian.load_state_dict(broadcast.state_dict(), strict=False)
    assert not missing and unexpected and all(name.startswith("layout_") for name in unexpected)
    slots = torch.randn(2, model.config.num_slots, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = gaussian(slots), broadcast(slots)
    torch.testing.assert_close(actual.layout_logits, expected.layout_logits)
    torch.testing.assert_close(actual.layout_cells, expected.layout_cells)


def test_a_broadcast_slot_paints_a_content_of_its_own_at_every_cell():
    conditioner = _conditioner("broadcast")
    with torch.no_grad():
        conditioner.layout_mlp[-1].weight.normal_(0.0, 0.3)  # a trained correction, not the initial zero
    slots = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = conditioner(slots)
        logits, contents = conditioner.decode_layout(output.local_embeddings)
    assert contents.shape == (2, 5, 9, LAYOUT_CHANNELS)
    # the same slot paints different contents at different cells (its position enters the MLP)
    assert (contents[:, :, 0] - contents[:, :, 8]).abs().mean() > 1e-3
    expected = torch.einsum("bsp,bspc->bpc", logits.softmax(dim=1), contents)
    torch.testing.assert_close(output.layout_cells, expected)
    torch.testing.assert_close(conditioner.layout_logits(output.local_embeddings), logits)


def _fit_ring(layout_type: str, steps: int = 300) -> float:
    """Fit the colour channels of a two-slot layout on an 8 x 8 grid to a ring on a background (free slot embeddings,
    the conditioner trained too); returns the final MSE."""
    conditioner = _conditioner(layout_type, num_slots=2, grid=8).train()
    ys, xs = torch.meshgrid(torch.arange(8.0) + 0.5, torch.arange(8.0) + 0.5, indexing="ij")
    radius = ((ys - 4) ** 2 + (xs - 4) ** 2).sqrt()
    ring = ((radius > 1.6) & (radius < 3.2)).float().flatten()  # [64]
    target = torch.zeros(1, 64, LAYOUT_CHANNELS)
    target[0, :, 0] = ring  # a bright ring, a dark centre and outside
    torch.manual_seed(1)
    slots = torch.nn.Parameter(torch.randn(1, 2, 16))
    optimizer = torch.optim.Adam([slots, *conditioner.parameters()], lr=1e-2)
    for _ in range(steps):
        loss = F.mse_loss(conditioner(slots).layout_cells, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def test_a_broadcast_layout_draws_an_outline_that_one_bump_per_slot_cannot():
    broadcast, gaussian = _fit_ring("broadcast"), _fit_ring("gaussian")
    # the ring covers 28 of the 64 cells: a flat guess scores 0.25 * 28/64 * (1 - 28/64) ~ 0.06 on channel 0
    assert broadcast < 0.002, broadcast
    assert gaussian > 10 * broadcast, (gaussian, broadcast)


def test_a_finer_layout_grid_compares_with_the_colours_and_maps_resized_to_it():
    from hf_vtok.utils import modeling_utils as vtok

    torch.manual_seed(0)
    model = SlotQFormerForPreTraining(_config(layout_resolution=16, layout_colour_loss_weight=2.0)).eval()
    assert tuple(model.conditioner.config.layout_grid) == (16, 16)
    images = _images(2)
    with torch.no_grad():
        output = model(pixel_values=images, noise=torch.randn(2, 3, 32, 32), timesteps=torch.tensor([10, 500]))
        condition = model.conditioner(output.slot_embeddings)
    assert condition.layout_cells.shape[1] == 256 and output.assignments.shape[-1] == 64  # 16 x 16 vs 8 x 8 patches
    config = model.config
    colours = F.adaptive_avg_pool2d(vtok.unnormalize(images, config.image_mean, config.image_std), 16)
    expected_colour = ((condition.layout_cells[..., :3] - colours.flatten(2).transpose(1, 2)) ** 2).mean()
    torch.testing.assert_close(output.loss_layout_colour, expected_colour)
    maps = F.interpolate(output.assignments.unflatten(-1, (8, 8)), size=(16, 16), mode="bilinear").flatten(2)
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, 256))  # still a distribution over the slots
    expected_layout = -(maps * condition.layout_logits.log_softmax(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(output.loss_layout, expected_layout)
    with pytest.raises(ValueError, match=r"layout_resolution"):
        _config(layout_resolution=-1)


def _script_args(**fields):
    from hf_vtok.trainer.arguments import TokenizerArguments

    return TokenizerArguments(family="slot_qformer", **fields)


def test_a_warm_start_copies_what_matches_and_names_the_new_head(tmp_path):
    from hf_vtok.trainer.tokenizer_trainer import build_training_model

    torch.manual_seed(0)
    previous = SlotQFormerForPreTraining(_config("gaussian"))
    previous.save_pretrained(tmp_path / "run" / "training_model")
    overrides = _config("broadcast").to_diff_dict()
    overrides.pop("model_type", None)
    overrides.pop("transformers_version", None)
    torch.manual_seed(1)  # another initialisation than the saved model's
    model = build_training_model(_script_args(config_overrides=overrides,
                                              warm_start_from=str(tmp_path / "run")))  # fmt: skip
    saved, own = previous.state_dict(), model.state_dict()
    for name in ("unet.conv_in.weight", "tokenizer.qformer.layers.0.slot_attention.to_q.weight",
                 "conditioner.proj_in.weight"):  # fmt: skip
        torch.testing.assert_close(own[name], saved[name])
    copied = [name for name in own if name in saved and own[name].shape == saved[name].shape]
    assert len(copied) > 0.9 * len(own)
    assert all(torch.equal(own[name], saved[name]) for name in copied)
    fresh = [name for name in own if name not in saved]
    correction = ("conditioner.layout_slot_projection.", "conditioner.layout_position_projection.",
                  "conditioner.layout_cell_embeddings", "conditioner.layout_mlp.")  # fmt: skip
    assert fresh and all(name.startswith(correction) for name in fresh), fresh
    # the bump and the contents come from the Gaussian run: the warm-started layout is the Gaussian one at first
    torch.testing.assert_close(own["conditioner.layout_geometry.weight"], saved["conditioner.layout_geometry.weight"])


def test_a_warm_start_refuses_what_it_cannot_start_from(tmp_path):
    from hf_vtok.models.setok.configuration_setok import SeTokConfig
    from hf_vtok.models.setok.modeling_setok import SeTokForPreTraining
    from hf_vtok.trainer.tokenizer_trainer import build_training_model

    with pytest.raises(ValueError, match=r"init_from.*warm_start_from.*not both"):
        _script_args(init_from="a", warm_start_from="b")
    (tmp_path / "empty" / "training_model").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"warm_start_from.*training_model/\*\.safetensors"):
        build_training_model(_script_args(warm_start_from=str(tmp_path / "empty")))
    SeTokForPreTraining(SeTokConfig.tiny()).save_pretrained(tmp_path / "setok" / "training_model")
    with pytest.raises(ValueError, match=r"warm_start_from.*'setok'.*not 'slot_qformer'"):
        build_training_model(_script_args(warm_start_from=str(tmp_path / "setok")))
