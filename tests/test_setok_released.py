"""SeTok against the released code's operations: clustering partition (center_rule="released" with the released
delta quirk and density noise), the released merger block layout, and the packed merger vs per-cluster loops.

``released_dpc_knn`` and ``ReleasedBlock`` below are this project's own re-implementations of what the released
SeTok code computes (per image: ``torch.cdist / sqrt(C)``, kNN density with ``rand * 1e-6``, the
``dist_matrix.flatten(1).max(-1)`` delta, threshold-or-top-k centres, nearest centre; its merger block: attention
layers sharing one pre-LayerNorm, then one FFN). They are references for these tests only.
"""

from __future__ import annotations

import pytest
import torch
from setok_clustering_reference import reference_cluster_merger, released_dpc_knn, same_partition
from torch import nn

from hf_vtok.models.setok import SeTokConfig, SeTokModel, density_peak_clustering
from hf_vtok.models.setok.clustering_setok import _released_distances
from hf_vtok.models.setok.modeling_setok import (
    SeTokClusterMerger,
    SeTokReleasedMergerBlock,
)

RELEASED = {
    "center_rule": "released", "distance_scale": "sqrt_dim", "density": "released", "delta_distance": "euclidean",
    "densest_delta": "released",
}


def library_labels(features, **kwargs):
    out = density_peak_clustering(features, **kwargs)
    return out.masks.argmax(dim=1), out


# --------------------------------------------------------------------------------------------- clustering


def quirk_case() -> torch.Tensor:
    """Eight patches on a line (x 2 in 4 channels, so that distance / sqrt(C) is the gap on the line)."""
    positions = torch.tensor([0.0, 0.1, 0.25, 0.3, 5.0, 9.0, 9.2, 10.0])
    features = torch.zeros(8, 4)
    features[:, 0] = 2.0 * positions
    return features


def test_released_delta_quirk_on_a_hand_built_case():
    features = quirk_case()
    kwargs = {**RELEASED, "knn_size": 3, "max_clusters": 8, "score_threshold": 4.0, "released_fallback_clusters": 2}
    centres, labels, score = released_dpc_knn(features, 3, 4.0, 2, None)
    ours, out = library_labels(features[None], **kwargs)
    assert same_partition(ours[0], labels)
    assert sorted(out.seed_indices[0][out.seed_indices[0] >= 0].tolist()) == centres.tolist()
    # (cdist computes 8 x 8 distances pairwise, not by its matrix product: equal to float rounding only)
    torch.testing.assert_close(out.log_scores[0].exp(), score, rtol=1e-4, atol=1e-6)
    # The quirk matters here: the densest patch's delta is the smallest row maximum (that of the patch at 5.0,
    # distance 5.0), not its own row maximum (~10), and the patch at 9.2 is capped the same way, so with the own
    # row maximum ("row") the scores and the partition differ.
    row, row_out = library_labels(features[None], **{**kwargs, "densest_delta": "row"})
    assert not same_partition(row[0], labels)
    densest = int(out.log_scores[0].argmax())
    rho = (row_out.log_scores[0] - out.log_scores[0]).exp()  # ratio of the two deltas of each patch
    assert rho[densest] > 1.5 and rho[6] > 1.5  # row delta / released delta: the cap changed both


def test_released_distances_are_cdist_bit_for_bit():
    features = torch.randn(3, 100, 48, generator=torch.Generator().manual_seed(0)) * 3.0
    ours = _released_distances(features, "sqrt_dim")
    for image in range(3):
        assert torch.equal(ours[image], torch.cdist(features[image], features[image]) / 48**0.5)


def structured_features(batch: int, grid: int, dim: int, seed: int) -> torch.Tensor:
    features = torch.empty(batch, grid * grid, dim)
    rows = torch.arange(grid).repeat_interleave(grid).float()
    cols = torch.arange(grid).repeat(grid).float()
    for image in range(batch):
        generator = torch.Generator().manual_seed(seed * 1000 + image)
        regions = int(torch.randint(3, 12, (1,), generator=generator))
        centres = torch.rand(regions, 2, generator=generator) * grid
        labels = ((rows[:, None] - centres[None, :, 0]) ** 2 + (cols[:, None] - centres[None, :, 1]) ** 2).argmin(1)
        features[image] = torch.randn(regions, dim, generator=generator)[labels]
        features[image] += 0.35 * torch.randn(grid * grid, dim, generator=generator)
    return features


@pytest.mark.parametrize("kind", ["gaussian", "structured"])
def test_released_rule_reproduces_the_released_partition_with_its_noise(kind):
    batch, grid, dim = 12, 12, 96
    if kind == "gaussian":
        features = torch.randn(batch, grid * grid, dim, generator=torch.Generator().manual_seed(1))
    else:
        features = structured_features(batch, grid, dim, seed=2)
    kwargs = {**RELEASED, "knn_size": 16, "max_clusters": grid * grid, "score_threshold": 0.55,
              "released_fallback_clusters": 16, "density_noise": 1e-6}
    ours, out = library_labels(features, generator=torch.Generator().manual_seed(7), **kwargs)
    torch.manual_seed(7)  # the released code draws torch.rand(N) per image from the global RNG
    for image in range(batch):
        centres, labels, _ = released_dpc_knn(features[image], 16, 0.55, 16, torch.rand(grid * grid) * 1e-6)
        assert int(out.num_tokens[image]) == centres.numel()
        assert same_partition(ours[image], labels), image
    # no cap: the slots follow the images' own centre counts, not max_clusters
    assert out.masks.shape[1] == int(out.num_tokens.max())


def test_density_noise_is_seeded_and_validated():
    features = torch.randn(2, 36, 8, generator=torch.Generator().manual_seed(0))
    kwargs = {**RELEASED, "knn_size": 4, "max_clusters": 36, "density_noise": 1e-3}
    first = density_peak_clustering(features, generator=torch.Generator().manual_seed(3), **kwargs)
    second = density_peak_clustering(features, generator=torch.Generator().manual_seed(3), **kwargs)
    other = density_peak_clustering(features, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(first.log_scores, second.log_scores)
    assert not torch.equal(first.log_scores, other.log_scores)
    with pytest.raises(TypeError, match="`generator`"):
        density_peak_clustering(features, generator=3, **kwargs)
    with pytest.raises(ValueError, match="`density_noise`"):
        density_peak_clustering(features, **{**kwargs, "density_noise": -1.0})
    with pytest.raises(ValueError, match="`densest_delta`"):
        density_peak_clustering(features, **{**kwargs, "densest_delta": "rows"})


def test_config_flags_for_the_released_code():
    config = SeTokConfig.tiny(**RELEASED, density_noise=1e-6, density_noise_seed=5, merger_block_layout="released")
    assert config.clustering_kwargs()["density_noise"] == 1e-6
    model = SeTokModel(config).eval()
    features = torch.randn(2, config.num_patches, config.feature_dim)
    with torch.no_grad():
        assert torch.equal(model.tokenize_features(features).embeddings, model.tokenize_features(features).embeddings)
    assert isinstance(model.merger.layers[0], SeTokReleasedMergerBlock)
    assert len(model.merger.layers[0].layers) == config.merger_num_layers
    for kwargs, name in (({"merger_block_layout": "both"}, "merger_block_layout"), ({"density_noise": -1.0}, "density_noise"),
                         ({"density_noise_seed": -2}, "density_noise_seed"), ({"densest_delta": "max"}, "densest_delta")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            SeTokConfig.tiny(**kwargs)
    with pytest.raises(TypeError, match="`density_noise_seed`"):
        SeTokConfig.tiny(density_noise_seed="5")


# ------------------------------------------------------------------------------------------------- merger


class ReleasedAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attention = (qkv[0] @ qkv[1].transpose(-2, -1)) * (dim // self.heads) ** -0.5
        return self.proj((attention.softmax(dim=-1) @ qkv[2]).transpose(1, 2).reshape(batch, length, dim))


class ReleasedMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ReleasedBlock(nn.Module):
    """The released merger block's structure and parameter names (shared ``norm1`` inside every layer)."""

    def __init__(self, dim, heads, hidden, depth):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.layers = nn.ModuleList(nn.Sequential(self.norm1, ReleasedAttention(dim, heads), nn.Identity())
                                    for _ in range(depth))
        self.mlp = ReleasedMlp(dim, hidden)

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x + self.mlp(self.norm2(x))


def map_released_keys(state_dict: dict) -> dict:
    """Released block keys -> SeTokReleasedMergerBlock keys (drop the duplicated shared norm, drop the ``.1``)."""
    mapped = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "layers":
            if parts[2] != "1":
                continue  # layers.{i}.0.* is norm1 again
            key = ".".join(parts[:2] + parts[3:])
        mapped[key] = value
    return mapped


def merger_config(layout: str, **overrides) -> SeTokConfig:
    return SeTokConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "num_attention_heads": 2, "patch_size": 14,
                       "image_size": 14 * 24, "num_hidden_layers": 1, "intermediate_size": 64},
        merger_block_layout=layout, layer_norm_eps=1e-5, **overrides,
    )


def ragged_masks():
    """Two 24 x 24 images: clusters of 1, 2, 100 and 473 patches (scattered), and of 2, 100, 100, 374."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 4, 576)
    for image, sizes in enumerate(((1, 2, 100, 473), (2, 100, 100, 374))):
        permutation = torch.randperm(576, generator=generator)
        labels = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
        masks[image, labels, permutation] = 1.0
    return masks


@pytest.mark.parametrize("layout", ["paper", "released"])
def test_packed_merger_equals_the_per_cluster_loop_on_ragged_clusters(layout):
    torch.manual_seed(0)
    merger = SeTokClusterMerger(merger_config(layout)).eval()
    for parameter in merger.parameters():  # non-trivial norms and biases
        nn.init.normal_(parameter, std=0.3)
    features = torch.randn(2, 576, 32)
    masks = ragged_masks()
    attention_mask = torch.ones(2, 4, dtype=torch.long)
    with torch.no_grad():
        packed = merger(features, masks, attention_mask)
        loop = reference_cluster_merger(merger, features, masks, attention_mask)
        # the same clusters through the dense (unpacked) path of the layers: attention over the whole image differs
        whole = merger.layers[0](features + merger.position_embeddings((24, 24), features.device, features.dtype))
    torch.testing.assert_close(packed, loop, rtol=1e-5, atol=1e-5)
    assert packed.abs().mean() > 0.1
    leaked = torch.bmm(masks, whole) / masks.sum(-1, keepdim=True)
    assert not torch.allclose(leaked, loop, atol=1e-3)  # attention across clusters would be caught


def test_released_layout_reproduces_the_released_block_weight_for_weight():
    torch.manual_seed(0)
    released = ReleasedBlock(32, 2, 128, depth=2).eval()
    for parameter in released.parameters():
        nn.init.normal_(parameter, std=0.3)
    merger = SeTokClusterMerger(merger_config("released")).eval()
    merger.layers[0].load_state_dict(map_released_keys(released.state_dict()), strict=True)  # one to one
    features = torch.randn(1, 576, 32)
    masks = ragged_masks()[:1]
    position = merger.position_embeddings((24, 24), features.device, features.dtype)
    with torch.no_grad():
        ours = merger(features, masks, torch.ones(1, 4, dtype=torch.long))
        # released group_encoding: each cluster's patches (index order) through the block, then the mean
        x = features[0] + position
        labels = masks[0].argmax(0)
        expected = torch.stack([released(x[labels == cluster][None])[0].mean(0) for cluster in range(4)])
    torch.testing.assert_close(ours[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("layout", "norm"), [("released", "pre"), ("paper", "pre"), ("paper", "post")])
def test_last_block_pools_inside_without_changing_values_or_gradients(layout, norm):
    # A pre-norm last block applies its FFN output projection to the cluster means. Against the plain stack pooled
    # afterwards (masks @ hidden / |cluster|): one cluster holding the whole image, so that attention inside it is
    # the padded path's attention, and one empty slot, which must still pool to exactly zero (no bias leaks in).
    torch.manual_seed(0)
    merger = SeTokClusterMerger(merger_config(layout, merger_norm=norm)).eval()
    for parameter in merger.parameters():
        nn.init.normal_(parameter, std=0.3)
    features = torch.randn(2, 576, 32, requires_grad=True)
    masks = torch.zeros(2, 2, 576)
    masks[:, 0] = 1.0
    masks.requires_grad_()
    weights = torch.randn(2, 2, 32) * torch.tensor([1.0, 0.0])[:, None]  # gradients through the real cluster
    ours = merger(features, masks, torch.ones(2, 2, dtype=torch.long))  # the empty slot is not masked out
    ours_grads = torch.autograd.grad((ours * weights).sum(), (features, masks))
    hidden = features + merger.position_embeddings((24, 24), features.device, features.dtype)
    for layer in merger.layers:
        hidden = layer(hidden)
    expected = torch.bmm(masks, hidden) / masks.sum(-1, keepdim=True).clamp_min(1e-6)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (features, masks))
    assert torch.equal(ours[:, 1].detach(), torch.zeros(2, 32))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(ours_grads, expected_grads, strict=True):
        assert want.abs().max() > 1e-4
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
