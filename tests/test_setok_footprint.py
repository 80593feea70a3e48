"""SeTok token footprints (a departure, off by default): a token ends in its cluster's mask on the patch grid and the
decoder paints every token's content over that footprint as extra UNet input channels.

Properties checked: the footprints of an image's tokens are its clusters (they partition the patches) and move with
the object they cover; the painted map puts each token's projected content where its footprint lies, averages
overlaps, leaves uncovered places and padding tokens at zero; the pipeline's samples depend on where the footprints
lie, its null branch paints nothing and it reloads from ``save_pretrained`` drawing the same images; the config
refuses inconsistent settings by name; the paper's defaults stay off.
"""

from __future__ import annotations

import pytest
import torch

from hf_vtok.models.setok.configuration_setok import SeTokConfig
from hf_vtok.models.setok.modeling_setok import SeTokForPreTraining, SeTokModel
from hf_vtok.models.setok.modeling_setok_decoder import SeTokFeatureMapper
from hf_vtok.utils.pipeline_utils import load_decoder_pipeline

torch.set_num_threads(1)

GRID = 8  # the tiny preset: 64 px images, 8 x 8 patches of 8 px
FOOTPRINT = {"token_embedding_dim": 40 + GRID * GRID, "token_footprint": True, "color_feature_weight": 4.0}
FOOTPRINT_DECODER = {"footprint_channels": 4, "unet": {"in_channels": 3 + 4}}


def _square_scene(row: int, col: int, side: int = 2) -> torch.Tensor:
    """A dark image with one bright square covering ``side`` x ``side`` patches from patch (row, col)."""
    image = torch.full((1, 3, 64, 64), -1.5)
    image[0, 0, row * 8 : (row + side) * 8, col * 8 : (col + side) * 8] = 1.5
    return image


def test_a_tokens_footprint_is_its_cluster_and_moves_with_the_object():
    torch.manual_seed(0)
    model = SeTokModel(SeTokConfig.tiny(**FOOTPRINT)).eval()
    footprints = []
    for row, col in ((1, 1), (1, 4), (5, 2)):
        with torch.no_grad():
            tokens = model.encode(_square_scene(row, col))
        real = tokens.attention_mask[0].bool()
        footprint = tokens.embeddings[0, real, -GRID * GRID :]
        torch.testing.assert_close(footprint, tokens.assignments[0, real])  # the cluster masks themselves
        torch.testing.assert_close(footprint.sum(0), torch.ones(GRID * GRID))  # they partition the patches
        square = torch.zeros(GRID, GRID)
        square[row : row + 2, col : col + 2] = 1
        assert any(torch.equal(f.reshape(GRID, GRID), square) for f in footprint), "no token covers exactly the square"
        footprints.append(footprint)
    assert not torch.equal(footprints[0], footprints[1])
    assert SeTokConfig().token_footprint is False and SeTokConfig().decoder_config.footprint_channels == 0  # the paper


def _mapper(channels: int = 3) -> SeTokFeatureMapper:
    torch.manual_seed(0)
    return SeTokFeatureMapper(token_dim=6 + 4, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
                              num_queries=2, cross_attention_dim=8, footprint_grid=(2, 2), footprint_channels=channels)  # fmt: skip


def test_the_painted_map_puts_each_tokens_content_on_its_footprint():
    mapper = _mapper().eval()
    content = torch.randn(1, 3, 6)
    corner, rest, overlap = [1.0, 0, 0, 0], [0, 1.0, 1.0, 0], [1.0, 0, 0, 0]  # 2 x 2 grid, row-major; patch 3 uncovered
    tokens = torch.cat([content, torch.tensor([[corner, rest, overlap]])], dim=-1)
    with torch.no_grad():
        values = mapper.footprint_projection(content)[0]  # [3, C]
        painted = mapper.paint_footprints(tokens, torch.tensor([[1, 1, 0]]), size=2)[0]  # third token: padding
        both = mapper.paint_footprints(tokens, torch.tensor([[1, 1, 1]]), size=2)[0]
        exchanged = torch.cat([content[:, :2], tokens[:, [1, 0], 6:]], dim=-1)  # same contents, footprints swapped
        swapped = mapper.paint_footprints(exchanged, torch.tensor([[1, 1]]), size=2)[0]
    torch.testing.assert_close(painted[:, 0, 0], values[0])
    torch.testing.assert_close(painted[:, 0, 1], values[1])
    torch.testing.assert_close(painted[:, 1, 0], values[1])
    assert painted[:, 1, 1].abs().max() == 0  # no footprint there: nothing painted
    torch.testing.assert_close(both[:, 0, 0], (values[0] + values[2]) / 2)  # overlapping footprints average
    # the same contents with their footprints exchanged: the paint follows the footprints
    torch.testing.assert_close(swapped[:, 0, 0], values[1])
    torch.testing.assert_close(swapped[:, 0, 1], values[0])
    # resized to the UNet's grid, a partition still covers every position once
    partition = torch.cat([content[:, :2], torch.tensor([[[1.0, 1, 0, 0], [0, 0, 1, 1]]])], dim=-1)
    with torch.no_grad():
        large = mapper.paint_footprints(partition, torch.ones(1, 2), size=8)[0]
        values = mapper.footprint_projection(content[:, :2])[0]
    torch.testing.assert_close(large[:, 0, 3], values[0])  # top half: the first token's content
    torch.testing.assert_close(large[:, 7, 5], values[1])
    assert mapper.null_footprint_map(2, 8).abs().max() == 0 and mapper.null_footprint_map(2, 8).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="footprint_channels"):
        _mapper(channels=0).paint_footprints(tokens, torch.ones(1, 3), size=2)
    with pytest.raises(ValueError, match="footprint_grid"):
        SeTokFeatureMapper(token_dim=10, footprint_channels=3)
    with pytest.raises(ValueError, match="footprint_grid"):
        SeTokFeatureMapper(token_dim=4, footprint_grid=(2, 2), footprint_channels=3)


def test_the_decoder_reads_the_footprints_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = SeTokForPreTraining(SeTokConfig.tiny(**FOOTPRINT, decoder_config=FOOTPRINT_DECODER)).eval()
    with torch.no_grad():  # the UNet's weights on the painted channels: not zero-initialised, so they act at once
        assert model.unet.conv_in.weight[:, 3:].abs().sum() > 0
    pipe = model.get_decoder_pipeline()
    tokens = model.tokenizer.encode(_square_scene(1, 1))
    moved = tokens.embeddings.clone()
    moved[..., -GRID * GRID :] = moved[..., -GRID * GRID :].reshape(-1, GRID, GRID).roll(3, dims=-1).reshape(moved.shape[:2] + (-1,))

    def sample(embeddings, guidance=1.0, pipeline=pipe):
        return pipeline(token_embeddings=embeddings, attention_mask=tokens.attention_mask, num_inference_steps=2,
                        guidance_scale=guidance, output_type="pt", generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    seen = []
    pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    first = sample(tokens.embeddings)
    condition = pipe.prepare_condition(tokens.embeddings, tokens.attention_mask)
    assert all(torch.equal(sample_input[:, 3:], condition["sample_condition"]) for sample_input in seen)  # every step
    assert (sample(moved) - first).abs().max() > 1e-3  # same contents elsewhere: another picture
    # the null branch paints nothing, the conditional one the footprints
    null = pipe.prepare_null_condition(condition)
    assert condition["sample_condition"].shape == (1, 4, 32, 32) and condition["sample_condition"].abs().max() > 0
    assert null["sample_condition"].abs().max() == 0
    guided = sample(tokens.embeddings, guidance=3.0)
    pipe.save_pretrained(tmp_path / "decoder")
    reloaded = load_decoder_pipeline(tmp_path / "decoder")
    assert reloaded.feature_mapper.config.footprint_grid in ((GRID, GRID), [GRID, GRID])
    torch.testing.assert_close(sample(tokens.embeddings, pipeline=reloaded), first)
    torch.testing.assert_close(sample(tokens.embeddings, guidance=3.0, pipeline=reloaded), guided)
    # training sees the same map: the loss moves the painting's projection
    model.train()
    output = model(_square_scene(2, 3).repeat(2, 1, 1, 1))
    output.loss.backward()
    assert model.feature_mapper.footprint_projection[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("overrides", "error", "name"),
    [
        ({"decoder_config": FOOTPRINT_DECODER}, ValueError, "token_footprint"),  # a map but no footprints
        ({**FOOTPRINT, "decoder_config": {"footprint_channels": 4}}, ValueError, "in_channels"),  # UNet not widened
        ({**FOOTPRINT, "token_embedding_dim": GRID * GRID}, ValueError, "token_embedding_dim"),  # no room for content
        ({**FOOTPRINT, "token_footprint": 1}, TypeError, "token_footprint"),
        ({**FOOTPRINT, "decoder_config": {"footprint_channels": -1}}, ValueError, "footprint_channels"),
    ],
)
def test_config_refuses_inconsistent_footprints(overrides, error, name):
    with pytest.raises(error, match=name):
        SeTokConfig.tiny(**overrides)
