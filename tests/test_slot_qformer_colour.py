"""The Slot Q-Former's colour-reconstruction loss (a departure, off by default: ``colour_reconstruction_loss_weight``).

Properties checked: the loss is the MSE of every patch's mean colour against the slots' colour guesses mixed by the
slot attention's weights; it is zero when each slot wins one uniformly coloured region and guesses its colour, and
stays above zero whatever the guesses when one slot wins two regions of different colours (the grouping pressure it
exists for); it joins the stage-1 loss with its weight and trains the colour head and the Q-Former, and stage 2 neither
computes it nor trains the head; the paper's default builds no head.
"""

from __future__ import annotations

import pytest
import torch

from hf_vtok.models.slot_qformer.configuration_slot_qformer import SlotQFormerConfig
from hf_vtok.models.slot_qformer.modeling_slot_qformer import SlotQFormerForPreTraining

torch.set_num_threads(1)


def _model(**overrides) -> SlotQFormerForPreTraining:
    torch.manual_seed(0)
    values = {"contrastive_loss_weight": 0.0, "text_generation_loss_weight": 0.0, "colour_reconstruction_loss_weight": 2.0}
    return SlotQFormerForPreTraining(SlotQFormerConfig.tiny(**{**values, **overrides})).eval()


def _normalised(model, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as the image processor would hand them to the model."""
    mean = torch.tensor(model.config.image_mean)[:, None, None]
    std = torch.tensor(model.config.image_std)[:, None, None]
    return (images - mean) / std


def _two_colour_image(model) -> tuple[torch.Tensor, torch.Tensor]:
    """One 64 px image, left half red, right half blue, and the patch ids [N] of the left half (8 x 8 patches)."""
    image = torch.zeros(1, 3, 64, 64)
    image[:, 0, :, :32] = 1.0
    image[:, 2, :, 32:] = 1.0
    left = (torch.arange(64) % 8) < 4
    return _normalised(model, image), left


def _loss_with_guesses(model, pixel_values, assignments, guesses):
    model.colour_head.forward = lambda slots: guesses  # the slots' colour guesses, fixed by hand
    return model.colour_reconstruction_loss(torch.zeros(1, 8, 64), assignments, pixel_values)


def test_split_regions_reconstruct_exactly_and_a_lumped_slot_cannot():
    model = _model()
    pixel_values, left = _two_colour_image(model)
    split = torch.zeros(1, 8, 64)
    split[0, 0, left], split[0, 1, ~left] = 1.0, 1.0
    guesses = torch.zeros(1, 8, 3)
    guesses[0, 0], guesses[0, 1] = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    assert float(_loss_with_guesses(model, pixel_values, split, guesses)) < 1e-10
    lumped = torch.zeros(1, 8, 64)
    lumped[0, 0] = 1.0
    best = torch.zeros(1, 8, 3)
    best[0, 0] = torch.tensor([0.5, 0.0, 0.5])  # the mean colour: the best one colour can do
    floor = float(_loss_with_guesses(model, pixel_values, lumped, best))
    assert floor == pytest.approx(2 * 0.25 / 3, rel=1e-5)  # red and blue each off by 0.5 on half the patches
    for attempt in range(5):
        other = best.clone()
        other[0, 0] = torch.rand(3, generator=torch.Generator().manual_seed(attempt))
        assert float(_loss_with_guesses(model, pixel_values, lumped, other)) >= floor


def test_it_joins_the_stage_one_loss_and_trains_the_head_and_the_qformer():
    model = _model().train()
    images = _normalised(model, torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    output = model(pixel_values=images)
    expected = output.loss_diffusion + 0.5 * output.loss_global_mse + 2.0 * output.loss_colour_reconstruction
    torch.testing.assert_close(output.loss, expected)
    output.loss_colour_reconstruction.backward()
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.colour_head.parameters())
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.tokenizer.qformer.parameters())


def test_stage_two_leaves_it_out_and_the_paper_has_none():
    model = _model().set_stage(2)
    output = model(pixel_values=torch.randn(2, 3, 64, 64))
    assert output.loss_colour_reconstruction is None
    assert not any(p.requires_grad for p in model.colour_head.parameters())
    assert SlotQFormerConfig().colour_reconstruction_loss_weight == 0.0
    paper_like = SlotQFormerForPreTraining(SlotQFormerConfig.tiny())
    assert paper_like.colour_head is None and not any("colour_head" in name for name, _ in paper_like.named_parameters())
    with pytest.raises(ValueError, match="colour_reconstruction_loss_weight"):
        SlotQFormerConfig.tiny(colour_reconstruction_loss_weight=-1.0)
