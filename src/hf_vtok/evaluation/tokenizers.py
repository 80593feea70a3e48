"""Quality of any tokenizer on a dataset with the same code: reconstruction and object discovery.

Works through the common API only (``encode`` → ``VisualTokens``, the family's decoder pipeline), so
the demo, ``hf-vtok eval`` and the benchmarks never branch on the family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..utils.validation import check_int, check_safetensors_file, describe
from .metrics import foreground_ari, mean_iou_matched, psnr, ssim

__all__ = ["LoadedTokenizer", "TokenizerEvaluation", "decode_tokens", "evaluate_tokenizer", "load_tokenizer_folder", "resize_images"]


@dataclass
class LoadedTokenizer:
    """A tokenizer model, its image processor and its decoder pipeline, loaded from one folder."""

    model: object
    image_processor: object
    pipeline: object
    path: Path | None = None

    @property
    def image_size(self) -> int:
        """The tokenizer's input size."""
        return int(self.model.config.image_size)

    @property
    def decoder_image_size(self) -> int:
        """The side of the images the decoder draws: its denoiser's sample size, times the autoencoder's compression
        for a latent decoder (SeTok on DINOv2 reads 126 px and draws 128 px)."""
        from ..utils.modeling_utils import autoencoder_compression

        vae = self.pipeline.vae
        return int(self.pipeline.denoiser.config.sample_size) * (1 if vae is None else autoencoder_compression(vae))


def load_tokenizer_folder(path: str | Path) -> LoadedTokenizer:
    """Load a checkpoint's tokenizer (model + image processor) and ``decoder/`` pipeline with the Auto classes.

    The tokenizer is ``tokenizer/`` (a training run) or the pipeline's own ``decoder/tokenizer/`` (a shipped
    checkpoint, see :func:`~hf_vtok.data.pretokenize.tokenizer_subfolder`). The pipeline class is read from
    ``decoder/model_index.json`` and looked up in ``hf_vtok``, so any family's folder loads the same way.
    """

    from transformers import AutoImageProcessor, AutoModel

    from ..data.pretokenize import tokenizer_subfolder
    from ..utils.pipeline_utils import load_decoder_pipeline

    if not isinstance(path, (str, Path)):
        raise TypeError(f"`path` must be a folder path, got {describe(path)}.")
    path = Path(path)
    tokenizer_folder = tokenizer_subfolder(path) or path / "tokenizer"
    for sub in (tokenizer_folder, path / "decoder"):
        if not sub.is_dir():
            raise ValueError(
                f"`path` must hold `tokenizer/` and `decoder/` folders (or the tokenizer only as `decoder/tokenizer/`), "
                f"missing {str(sub)!r}."
            )
    for required in (tokenizer_folder / "config.json", tokenizer_folder / "preprocessor_config.json", path / "decoder" / "model_index.json"):
        if not required.is_file():
            raise ValueError(
                f"`path` {str(path)!r} is not a complete tokenizer folder: {required.relative_to(path).as_posix()} is missing "
                "(save the model, its image processor and the decoder pipeline, e.g. with `hf_vtok.trainer.tokenizer_trainer.export_tokenizer`)."
            )
    for weights in sorted(path.glob("**/*.safetensors")):  # diffusers' own error for a broken file is vaguer
        check_safetensors_file(weights, name="path")
    model = AutoModel.from_pretrained(tokenizer_folder).eval()
    image_processor = AutoImageProcessor.from_pretrained(tokenizer_folder)
    pipeline = load_decoder_pipeline(path / "decoder")
    pipeline.set_progress_bar_config(disable=True)
    return LoadedTokenizer(model=model, image_processor=image_processor, pipeline=pipeline, path=path)


def encode_images(loaded: LoadedTokenizer, images) -> tuple:
    """Encode ``images`` (anything the image processor takes); returns the ``VisualTokens`` and the processed inputs
    as ``[B, H, W, 3]`` floats in [0, 1], what every reconstruction is compared with."""
    if isinstance(images, (list, tuple)) and len(images) == 0:
        raise ValueError("`images` must contain at least one image, got an empty list.")
    pixel_values = loaded.image_processor(images, return_tensors="pt").pixel_values
    originals = loaded.image_processor.postprocess_pixel_values(pixel_values).permute(0, 2, 3, 1).numpy()
    return loaded.model.encode(pixel_values), originals.astype(np.float64)


def token_inputs(tokens) -> dict:
    """The decoder pipeline's arguments for ``VisualTokens``: the ids of a discrete family, else the embeddings."""
    if tokens.ids is not None:
        return {"token_ids": tokens.ids}
    return {"token_embeddings": tokens.embeddings, "attention_mask": tokens.attention_mask}


def decode_tokens(loaded: LoadedTokenizer, tokens: dict, steps: int, seed: int, **pipeline_kwargs) -> np.ndarray:
    """Decode ``tokens`` (:func:`token_inputs`: ``{"token_ids": ...}`` or ``{"token_embeddings": ...,
    "attention_mask": ...}``) with the loaded pipeline to ``[B, H, W, 3]`` floats; the same ``seed`` gives every
    variant of a batch the same noise."""
    generator = torch.Generator().manual_seed(seed)
    out = loaded.pipeline(**tokens, num_inference_steps=steps, generator=generator, output_type="np", **pipeline_kwargs)
    return np.asarray(out.images, dtype=np.float64)


def reconstruction_scores(originals: np.ndarray, decoded: np.ndarray) -> tuple[list, list]:
    """PSNR and SSIM per image of ``decoded`` against ``originals`` resized to the decoder's resolution."""
    targets = resize_images(originals, decoded.shape[1:3])
    return np.atleast_1d(psnr(targets, decoded)).tolist(), np.atleast_1d(ssim(targets, decoded)).tolist()


def assignment_maps(assignments: torch.Tensor, attention_mask: torch.Tensor | None = None) -> np.ndarray:
    """Hard per-patch group maps ``[B, h, w]`` from soft or hard ``assignments`` ``[B, groups, patches]``."""
    if assignments.ndim != 3:
        raise ValueError(f"`assignments` must be [B, groups, patches], got {describe(assignments)}.")
    scores = assignments.float()
    # the mask marks padded groups when there is one token per group (SeTok's clusters); SlotQFormer has
    # several ids per slot, so its (all-ones) token mask does not line up with the slots and is not needed
    if attention_mask is not None and attention_mask.shape[-1] == scores.shape[1]:
        scores = scores.masked_fill(~attention_mask.bool()[:, :, None], -math.inf)
    labels = scores.argmax(dim=1)
    side = round(math.sqrt(labels.shape[-1]))
    if side * side != labels.shape[-1]:
        raise ValueError(f"`assignments` must cover a square grid of patches, got {labels.shape[-1]} patches.")
    return labels.reshape(-1, side, side).cpu().numpy()


def group_maps(tokens, size: int) -> np.ndarray | None:
    """The tokens' per-patch groups (slot attention, clusters) as ``[B, size, size]`` label maps (nearest-neighbour
    upsampling), or ``None`` when the tokens carry no assignments."""
    if tokens.assignments is None:
        return None
    labels = assignment_maps(tokens.assignments, tokens.attention_mask).astype(np.int32)
    return np.stack([np.asarray(Image.fromarray(m).resize((size, size), Image.Resampling.NEAREST)) for m in labels])


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a ``[B, H, W, C]`` float batch to ``size`` = (height, width), bilinear with antialiasing.

    Decoders may render at another resolution than the tokenizer's input (the tiny SlotQFormer and SeTok
    decoders render 32 px from 64 px inputs, and are trained against the input downsampled the same way):
    reconstructions are compared with the input resized to the decoder's resolution.
    """
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    tensor = torch.nn.functional.interpolate(tensor, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return tensor.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy().astype(np.float64)


@dataclass
class TokenizerEvaluation:
    """Per-image numbers, with means in :meth:`summary`."""

    psnr: list = field(default_factory=list)
    ssim: list = field(default_factory=list)
    fg_ari: list = field(default_factory=list)
    miou: list = field(default_factory=list)
    num_tokens: list = field(default_factory=list)
    num_objects: list = field(default_factory=list)
    reconstructions: list = field(default_factory=list)
    originals: list = field(default_factory=list)
    group_maps: list = field(default_factory=list)
    perceptual: list = field(default_factory=list)
    clip_i: list = field(default_factory=list)
    clip_t: list = field(default_factory=list)

    def summary(self) -> dict:
        def mean(values):
            values = [v for v in values if v is not None and np.isfinite(v)]
            return round(float(np.mean(values)), 4) if values else None

        result = {"psnr": mean(self.psnr), "ssim": mean(self.ssim), "perceptual": mean(self.perceptual),
                  "clip_i": mean(self.clip_i), "clip_t": mean(self.clip_t), "fg_ari": mean(self.fg_ari), "miou": mean(self.miou)}
        if self.num_tokens:
            result["mean_tokens"] = mean(self.num_tokens)
            if len(set(self.num_tokens)) > 1 and len(set(self.num_objects)) > 1:
                result["tokens_objects_correlation"] = round(float(np.corrcoef(self.num_tokens, self.num_objects)[0, 1]), 4)
        return {key: value for key, value in result.items() if value is not None}


def _keep(kept: list, new, limit: int) -> None:
    kept += list(new[: max(0, limit - len(kept))])


@torch.no_grad()
def evaluate_tokenizer(
    loaded: LoadedTokenizer,
    dataset,
    *,
    batch_size: int = 16,
    num_inference_steps: int = 25,
    seed: int = 0,
    reconstruct: bool = True,
    keep_images: int = 16,
    perceptual_backbone: str | Path | None = None,
    clip_path: str | Path | None = None,
    caption_column: str = "caption",
    guidance_scale: float | None = None,
) -> TokenizerEvaluation:
    """Encode every image of ``dataset`` (``image`` column; ``mask`` and ``objects`` when present).

    Measures PSNR/SSIM of the pipeline's reconstruction against the processed input (resized to the decoder's
    resolution, see :func:`resize_images`), FG-ARI and matched mIoU of the token assignments (slot attention,
    clusters) against the true masks, and the real token count per image against the object count.

    With ``perceptual_backbone`` (a local transformers vision model folder) also the LPIPS-style
    :func:`~hf_vtok.evaluation.perceptual.perceptual_distance`; with ``clip_path`` (a local CLIP folder) CLIP-I
    between input and reconstruction and, when the dataset has ``caption_column``, the CLIP score of the
    reconstruction against the caption. ``guidance_scale`` overrides the pipeline's default.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    check_int("num_inference_steps", num_inference_steps, minimum=1)
    if len(dataset) == 0:
        raise ValueError("`dataset` must contain at least one image, got an empty dataset.")
    size = loaded.image_size
    result = TokenizerEvaluation()
    generator = torch.Generator().manual_seed(seed)
    extra = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        images = [image.convert("RGB") for image in rows["image"]]
        tokens, originals = encode_images(loaded, images)
        result.num_tokens += tokens.attention_mask.sum(-1).tolist()
        if "objects" in rows:
            result.num_objects += [len(objects) for objects in rows["objects"]]
        if reconstruct:
            out = loaded.pipeline(  # decode the tokens just measured, not a second encoding of the images
                **token_inputs(tokens), num_inference_steps=num_inference_steps, generator=generator, output_type="np", **extra
            )
            reconstructions = np.asarray(out.images, dtype=np.float64)
            targets = resize_images(originals, reconstructions.shape[1:3])
            psnr_values, ssim_values = reconstruction_scores(targets, reconstructions)  # already at the decoder's size
            result.psnr += psnr_values
            result.ssim += ssim_values
            if perceptual_backbone is not None:
                from .perceptual import perceptual_distance

                result.perceptual += list(np.atleast_1d(perceptual_distance(targets, reconstructions, perceptual_backbone)))
            if clip_path is not None:
                from .perceptual import clip_image_similarity, clip_score

                result.clip_i += list(np.atleast_1d(clip_image_similarity(targets, reconstructions, clip_path)))
                if caption_column in rows:
                    result.clip_t += list(np.atleast_1d(clip_score(reconstructions, list(rows[caption_column]), clip_path)))
            _keep(result.reconstructions, reconstructions, keep_images)
        _keep(result.originals, originals, keep_images)
        maps = group_maps(tokens, size)
        if maps is not None:
            _keep(result.group_maps, maps, keep_images)
            if "mask" in rows:
                true = np.stack([np.asarray(m.resize((size, size), Image.Resampling.NEAREST)) for m in rows["mask"]])
                result.fg_ari += list(np.atleast_1d(foreground_ari(true, maps)))
                result.miou += list(np.atleast_1d(mean_iou_matched(true, maps)))
    return result
