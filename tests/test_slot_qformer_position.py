"""Slot Attention's soft position embedding in the Slot Q-Former (a departure, off by default:
``vision_position_embedding``).

Properties checked: the grid features are each patch's centre as (y, x, 1 - y, 1 - x), row-major; with the embedding,
the patches of a uniform image (near-identical vision features) become distinguishable by place, and a slot embedding
then says where its object is: a ridge regression reads a square's position back from the slots, which it cannot
without the embedding; the embedding starts at the framework's default initialisation, not the 0.02-std of the other
linears; stage 1 trains it, stage 2 freezes it; the paper's default has none.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hf_vtok.models.slot_qformer.configuration_slot_qformer import SlotQFormerConfig
from hf_vtok.models.slot_qformer.modeling_slot_qformer import SlotQFormerForPreTraining, SlotQFormerModel
from hf_vtok.utils.modeling_utils import grid_position_features

torch.set_num_threads(1)


def _config(**overrides) -> SlotQFormerConfig:
    values = {"contrastive_loss_weight": 0.0, "text_generation_loss_weight": 0.0, "vision_position_embedding": True}
    return SlotQFormerConfig.tiny(**{**values, **overrides})


def test_grid_features_are_the_four_sided_cell_centres_in_row_major_order():
    grid = grid_position_features(2, 4)
    assert grid.shape == (8, 4)
    torch.testing.assert_close(grid[1], torch.tensor([0.25, 0.375, 0.75, 0.625]))  # row 0, column 1
    torch.testing.assert_close(grid[4], torch.tensor([0.75, 0.125, 0.25, 0.875]))  # row 1, column 0
    torch.testing.assert_close(grid[:, :2] + grid[:, 2:], torch.ones(8, 2))


def test_the_patches_of_a_uniform_image_differ_only_by_their_place():
    uniform = torch.zeros(1, 3, 64, 64)
    torch.manual_seed(0)
    model = SlotQFormerModel(_config()).eval()
    embedding = model.vision_position_embedding
    with torch.no_grad():
        placed = model.get_image_features(uniform).last_hidden_state[0]
        model.vision_position_embedding = None  # the same model without the embedding
        plain = model.get_image_features(uniform).last_hidden_state[0]
        torch.testing.assert_close(placed - plain, embedding(grid_position_features(8, 8)))
    # the frozen encoder sees a uniform image almost the same at every patch; the grid tells them apart
    assert float(placed.std(dim=0).mean()) > 3 * float(plain.std(dim=0).mean())


def _square_scenes(count: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Scenes of one bright square at a random place on a dark background, and each square's centre (y, x) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    images, centres = torch.full((count, 3, 64, 64), -1.5), []
    for index in range(count):
        top, left = torch.randint(0, 44, (2,), generator=generator).tolist()
        images[index, :, top : top + 20, left : left + 20] = 1.5
        centres.append(((top + 10) / 64, (left + 10) / 64))
    return images, np.array(centres)


def _position_read_back(vision_position_embedding: bool) -> float:
    """R² of the square's centre read back from the slot embeddings (all slots, concatenated) of a freshly built
    encoder: a standardised ridge regression fit on 64 scenes, scored on 32 others."""
    torch.manual_seed(0)
    model = SlotQFormerModel(_config(vision_position_embedding=vision_position_embedding)).eval()
    features = {}
    for split, (count, seed) in {"fit": (64, 1), "score": (32, 2)}.items():
        scenes, centres = _square_scenes(count, seed)
        with torch.no_grad():
            slots = model.encode_slots(scenes, sample_slots=False).slot_embeddings
        features[split] = (slots.flatten(1).numpy(), centres)
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=[0.1, 1.0, 10.0, 100.0])).fit(*features["fit"])
    return float(ridge.score(*features["score"]))


def test_with_the_embedding_the_slots_say_where_their_object_is():
    with_position, without = _position_read_back(True), _position_read_back(False)
    # measured: 0.99 with it, -0.34 without (the frozen features of a flat square say little of where it is)
    assert with_position > 0.8 and without < 0.5, (with_position, without)


def test_stage_one_trains_the_embedding_and_stage_two_freezes_it():
    torch.manual_seed(0)
    model = SlotQFormerForPreTraining(_config())
    assert model.tokenizer.vision_position_embedding.weight.requires_grad
    model.set_stage(2).train()
    assert not model.tokenizer.vision_position_embedding.weight.requires_grad
    assert not model.tokenizer.vision_position_embedding.training
    # Slot Attention's dense-layer default (uniform in ±1/√4), not the 0.02-std normal of the other linears
    assert float(model.tokenizer.vision_position_embedding.weight.abs().max()) > 0.3


def test_the_paper_has_no_position_embedding():
    assert SlotQFormerConfig().vision_position_embedding is False
    torch.manual_seed(0)
    model = SlotQFormerModel(_config(vision_position_embedding=False))
    assert model.vision_position_embedding is None
    assert not any("vision_position_embedding" in name for name, _ in model.named_parameters())
