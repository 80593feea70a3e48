"""Object-discovery and reconstruction metrics (hf_vtok.evaluation.metrics)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from hf_vtok.evaluation import (
    adjusted_rand_index,
    color_kmeans_segmentation,
    foreground_ari,
    mean_iou_matched,
    psnr,
    ssim,
)

torch.set_num_threads(1)


def _blocks():
    """A 4x4 mask: background on the left half, objects 1 and 2 stacked on the right."""
    return np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2]])


# --------------------------------------------------------------------------------------------------
# ARI
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "true, pred, expected",
    [  # reference values from scikit-learn's adjusted_rand_score documentation
        ([0, 0, 1, 1], [0, 0, 1, 1], 1.0),
        ([0, 0, 1, 1], [1, 1, 0, 0], 1.0),
        ([0, 0, 1, 2], [0, 0, 1, 1], 0.5714285714285715),
        ([0, 0, 1, 1], [0, 0, 1, 2], 0.5714285714285715),
        ([0, 0, 0, 0], [0, 1, 2, 3], 0.0),
        ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),
    ],
)
def test_adjusted_rand_index_known_values(true, pred, expected):
    # A 1 x 4 "image"; a third leading dimension makes it a batch of one.
    assert adjusted_rand_index(np.array([true]), np.array([pred])) == pytest.approx(expected)
    batched = adjusted_rand_index(np.array([[true]]), np.array([[pred]]))
    assert isinstance(batched, np.ndarray) and batched.shape == (1,) and batched[0] == pytest.approx(expected)


def test_foreground_ari_ignores_background_and_label_values():
    true = _blocks()
    assert foreground_ari(true, true) == 1.0
    assert foreground_ari(true, (true + 7) * 3) == 1.0  # any relabelling
    merged_background = np.where(true == 0, 1, true)  # background pixels join object 1: not counted
    assert foreground_ari(true, merged_background) == 1.0
    assert adjusted_rand_index(true, merged_background) < 1.0
    one_segment = np.zeros_like(true)  # both objects merged
    assert foreground_ari(true, one_segment) == pytest.approx(0.0)
    assert math.isnan(foreground_ari(np.zeros((4, 4), int), true))


def test_foreground_ari_batches_and_accepts_torch_and_pil():
    true = np.stack([_blocks(), _blocks()])
    pred = np.stack([_blocks(), np.zeros((4, 4), int)])
    values = foreground_ari(torch.from_numpy(true), torch.from_numpy(pred))
    assert values.shape == (2,) and values[0] == 1.0 and values[1] == pytest.approx(0.0)
    mask_image = Image.fromarray(_blocks().astype(np.uint8))
    assert foreground_ari(mask_image, _blocks()) == 1.0


# --------------------------------------------------------------------------------------------------
# Matched mIoU
# --------------------------------------------------------------------------------------------------


def test_mean_iou_matched():
    true = _blocks()
    assert mean_iou_matched(true, true) == 1.0
    assert mean_iou_matched(true, 5 - true) == 1.0
    # Object 1 predicted as the whole right half: IoU 0.5 for one object, the other gets no segment.
    right_half = np.where(true > 0, 1, 0)
    assert mean_iou_matched(true, right_half) == pytest.approx((0.5 + 0.0) / 2)
    # One-to-one: a single segment cannot be matched to both objects.
    assert mean_iou_matched(true, np.zeros_like(true)) == pytest.approx((0.25 + 0.0) / 2)
    batched = mean_iou_matched(np.stack([true, true]), np.stack([true, right_half]))
    assert batched.tolist() == pytest.approx([1.0, 0.25])
    assert math.isnan(mean_iou_matched(np.zeros((4, 4), int), true))


# --------------------------------------------------------------------------------------------------
# Colour k-means baseline
# --------------------------------------------------------------------------------------------------


def test_color_kmeans_segments_flat_colours_exactly():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4, :4] = (255, 0, 0)
    image[4:, 4:] = (0, 0, 255)
    true = np.zeros((8, 8), int)
    true[:4, :4], true[4:, 4:] = 1, 2
    labels = color_kmeans_segmentation(image, 3, seed=1)
    assert labels.shape == (8, 8) and adjusted_rand_index(true, labels) == 1.0
    assert np.array_equal(labels, color_kmeans_segmentation(image, 3, seed=1))
    # More segments than colours: still a valid labelling, no crash.
    assert color_kmeans_segmentation(image, 5).max() < 5


# --------------------------------------------------------------------------------------------------
# PSNR / SSIM
# --------------------------------------------------------------------------------------------------


def test_psnr_known_values():
    image = np.random.default_rng(0).random((16, 16, 3))
    assert psnr(image, image) == math.inf  # documented: identical images give inf
    assert psnr(np.zeros((8, 8, 3)), np.full((8, 8, 3), 0.1)) == pytest.approx(20.0)
    assert psnr(np.zeros((8, 8)), np.full((8, 8), 0.5), data_range=2.0) == pytest.approx(20 * math.log10(4))
    batch = psnr(torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.1))
    assert batch.shape == (2,) and batch == pytest.approx([20.0, 20.0])


def test_ssim_matches_reference_and_layouts():
    rng = np.random.default_rng(0)
    a = rng.random((24, 20, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    reference = structural_similarity(
        a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) == pytest.approx(reference, abs=1e-9)
    channels_first = ssim(torch.from_numpy(a).permute(2, 0, 1), torch.from_numpy(b).permute(2, 0, 1))
    assert channels_first == pytest.approx(reference, abs=1e-9)
    uint8 = ssim(Image.fromarray((a * 255).astype(np.uint8)), (a * 255).astype(np.uint8))
    assert uint8 == pytest.approx(1.0)
    assert ssim(a, 1 - a) < 0.0  # anti-correlated structure


def test_ssim_of_flat_images_is_the_luminance_term():
    # no variance anywhere: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), C1 = (0.01 * data_range)^2
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert ssim(np.full((16, 16), 0.2), np.full((16, 16), 0.6)) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def test_metric_arguments_are_validated():
    with pytest.raises(ValueError, match="true_mask"):
        foreground_ari(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(TypeError, match="pred_mask"):
        foreground_ari(np.zeros((4, 4), int), np.zeros((4, 4)))
    with pytest.raises(TypeError, match="true_mask"):
        mean_iou_matched([[0, 1]], np.zeros((1, 2), int))
    with pytest.raises(ValueError, match="`a` and `b`"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 1)))
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros((8, 8)), np.zeros((8, 8)), data_range=0)
    with pytest.raises(ValueError, match="window_size"):
        ssim(np.zeros((16, 16)), np.zeros((16, 16)), window_size=4)
    with pytest.raises(ValueError, match="window_size"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="num_segments"):
        color_kmeans_segmentation(np.zeros((8, 8, 3)), 0)
    with pytest.raises(ValueError, match="image"):
        color_kmeans_segmentation(np.zeros((2, 8, 8, 3)), 2)


# --------------------------------------------------------------------------------------------------
# Baselines of `hf-vtok eval` (hf_vtok.evaluation.baselines)
# --------------------------------------------------------------------------------------------------


def test_mean_colour_baseline_psnr_is_the_hand_computation():
    from hf_vtok.evaluation import mean_colour_images

    images = np.random.default_rng(0).random((3, 16, 16, 3))
    baseline = mean_colour_images(images)
    for image, flat in zip(images, baseline):
        mean = image.reshape(-1, 3).mean(0)
        assert np.allclose(flat, mean)  # every pixel is the image's mean colour
        expected = 10 * math.log10(1.0 / np.mean((image - mean) ** 2))  # PSNR against the per-channel mean
        assert psnr(image, flat) == pytest.approx(expected, abs=1e-9)
    assert psnr(images, baseline) == pytest.approx([psnr(i, b) for i, b in zip(images, baseline)])


def test_same_bits_thumbnail_rule_stays_within_the_budget_and_is_monotone():
    from hf_vtok.evaluation import thumbnail_for_bits

    assert thumbnail_for_bits(144, max_side=128) == (4, 3)  # DDT: 16 ids x log2(512)
    assert thumbnail_for_bits(16 * 16 * 3 * 8, max_side=128) == (16, 8)
    assert thumbnail_for_bits(10**9, max_side=32) == (32, 8)  # capped at the image
    used = []
    for budget in range(3, 3000, 7):
        side, bits = thumbnail_for_bits(budget, max_side=64)
        used.append(side * side * 3 * bits)
        assert 1 <= bits <= 8 and used[-1] <= budget
        # no thumbnail within the budget carries more (brute force over every side and depth)
        assert used[-1] == max(s * s * 3 * b for s in range(1, 65) for b in range(1, 9) if s * s * 3 * b <= budget)
    assert all(a <= b for a, b in zip(used, used[1:]))
    with pytest.raises(ValueError, match="budget_bits"):
        thumbnail_for_bits(2, max_side=64)


def test_thumbnails_carry_what_their_bits_allow():
    from hf_vtok.evaluation import mean_colour_images, thumbnail_images

    images = np.random.default_rng(1).random((2, 32, 32, 3))
    assert np.abs(thumbnail_images(images, 32) - images).max() <= 0.5 / 255 + 1e-6  # full size: 8-bit rounding only
    assert np.abs(thumbnail_images(images, 1) - mean_colour_images(images)).max() <= 0.5 / 255 + 1e-6
    coarse, fine = psnr(images, thumbnail_images(images, 8, bits=1)), psnr(images, thumbnail_images(images, 8, bits=6))
    assert np.all(fine > coarse)
    levels = np.unique(thumbnail_images(np.full((1, 8, 8, 3), 0.3), 4, bits=2))
    assert levels == pytest.approx([1 / 3])  # 2 bits: levels 0, 1/3, 2/3, 1


def test_colour_fidelity_is_complete_on_flat_scenes_and_drops_for_a_recoloured_object():
    from hf_vtok.data.shapes import COLORS
    from hf_vtok.evaluation import colour_matches
    from hf_vtok.evaluation.quality import load_scenes

    flat = load_scenes("flat", 6, 64, seed=5)
    assert colour_matches(flat.images, flat.masks, flat.colours).all()  # flat originals: 100 %
    assert colour_matches(flat.images, flat.masks, flat.images).all()
    recoloured = flat.images.copy()
    first = flat.masks[0] == 1
    other = next(name for name in COLORS if name != flat.colours[0][0])
    recoloured[0][first] = np.asarray(COLORS[other]) / 255.0
    matches = colour_matches(recoloured, flat.masks, flat.images)
    assert not matches[0] and matches[1:].all()  # exactly the recoloured object is lost
    assert not colour_matches(recoloured, flat.masks, flat.colours)[0]
    textured = load_scenes("textured", 6, 64, seed=5)
    share = colour_matches(textured.images, textured.masks, textured.colours).mean()
    assert 0.3 < share < 1.0  # shading and texture move an object's mean colour
    with pytest.raises(ValueError, match="reference"):
        colour_matches(flat.images, flat.masks, [["no-such-colour"]] * 6)


def test_grid_partition_and_token_count_agreement():
    from hf_vtok.evaluation import grid_partition, token_count_agreement

    assert grid_partition(4, 2).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert np.unique(grid_partition(9, 3)).tolist() == list(range(9))
    counts = token_count_agreement([2, 3, 9, 5], [1, 1, 2, 4])  # targets 2, 2, 3, 5
    assert counts["share"] == 0.75  # 2 and 3 are within 1 of 2, 9 is not within 1 of 3, 5 hits 5
    assert counts["chance"] == pytest.approx(np.mean(np.abs(np.subtract.outer([2, 3, 9, 5], [2, 2, 3, 5])) <= 1))
    assert counts["majority"] == 0.75 and counts["majority_count"] in (2, 3)  # a constant 2 or 3 covers 2, 2, 3
    with pytest.raises(ValueError):
        token_count_agreement([1, 2], [1])


def test_the_patch_oracle_gives_small_objects_their_cells_and_bounds_a_grid_map():
    from hf_vtok.evaluation import foreground_ari, grid_partition, patch_oracle_labels

    masks = np.zeros((1, 8, 8), dtype=np.int64)
    masks[0, 0, 0] = 2  # one pixel of a 4 x 4 cell: plain majority would hand it to the background
    masks[0, 4:, 4:] = 1
    masks[0, 4, 0:2] = 3  # two objects share a cell: the larger one takes it
    masks[0, 5, 0] = 4
    labels = patch_oracle_labels(masks, 2)
    assert labels[0, :4, :4].tolist() == [[2] * 4] * 4 and (labels[0, 4:, 4:] == 1).all()
    assert (labels[0, 4:, :4] == 3).all() and (labels[0, :4, 4:] == 0).all()
    # on real scenes it groups almost every object pixel right, far above the same grid cut by position alone
    from hf_vtok.evaluation.quality import load_scenes

    scenes = load_scenes("flat", 32, 63, 998)
    oracle = np.nanmean(foreground_ari(scenes.masks, patch_oracle_labels(scenes.masks, 9)))
    grid = np.broadcast_to(grid_partition(63, 9), scenes.masks.shape)
    assert oracle > 0.9 > np.nanmean(foreground_ari(scenes.masks, grid))
    with pytest.raises(ValueError, match="masks"):
        patch_oracle_labels(np.zeros((8, 8), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="side"):
        patch_oracle_labels(masks, 9)


def test_distinct_ids_per_image_counts_codes_not_tokens():
    from hf_vtok.evaluation import distinct_ids_per_image

    ids = torch.tensor([[5, 5, 5, 5], [1, 2, 3, 4], [7, 7, 9, 0]])
    # a collapsed image (one code repeated) counts 1 whatever its length; padding (mask 0) is not a code
    assert distinct_ids_per_image(ids).tolist() == [1, 4, 3]
    assert distinct_ids_per_image(ids, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])).tolist() == [1, 2, 2]
    with pytest.raises(ValueError, match="integer"):
        distinct_ids_per_image(ids.float())
    with pytest.raises(ValueError, match="attention_mask"):
        distinct_ids_per_image(ids, torch.ones(3, 2))
