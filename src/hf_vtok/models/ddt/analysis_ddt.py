"""Analysis tools of the paper's section 5.4: decoding with an expanding prefix of tokens, and
counterfactual interpolation (swapping a span of tokens between two images).

Both decode every variant in ONE batched pipeline call from the same initial noise, so the pictures differ
only through the tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import PIL.Image
import PIL.ImageDraw
import torch

from ...utils.validation import check_int, describe


def _as_ids(pipe, value, name: str) -> torch.LongTensor:
    """Ids `[T]` from ids (`[T]`, `[1, T]`, list) or from one image (encoded by the pipeline's tokenizer)."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        value = torch.tensor(value, dtype=torch.long)
    if isinstance(value, torch.Tensor) and not value.is_floating_point():
        if value.ndim == 2 and value.shape[0] == 1:
            value = value[0]
        if value.ndim != 1:
            raise ValueError(f"`{name}` ids must have shape [T] or [1, T], got {describe(value)}.")
        if value.shape[0] != pipe.num_tokens:
            raise ValueError(f"`{name}` must hold {pipe.num_tokens} ids (T), got {value.shape[0]}.")
        size = pipe.tokenizer.config.codebook_size if pipe.tokenizer is not None else None
        if size is not None and (int(value.min()) < 0 or int(value.max()) >= size):
            raise ValueError(f"`{name}` must be codebook indices in [0, {size}), got [{int(value.min())}, {int(value.max())}].")
        return value.long()
    try:
        return pipe.encode_images(images=value).ids[0].cpu()
    except (TypeError, ValueError) as error:
        raise type(error)(f"`{name}` must be token ids or one image: {error}") from None


def _shared_noise(pipe, batch: int, seed: int) -> torch.Tensor:
    cfg = pipe.transformer.config
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=generator)
    return noise.expand(batch, -1, -1, -1).contiguous()


def _strip(images: Sequence[PIL.Image.Image], labels: Sequence[str] | None) -> PIL.Image.Image:
    width, height = images[0].size
    label_height = 12 if labels else 0
    strip = PIL.Image.new("RGB", (width * len(images), height + label_height), "white")
    draw = PIL.ImageDraw.Draw(strip)
    for index, image in enumerate(images):
        strip.paste(image.convert("RGB").resize((width, height)), (index * width, label_height))
        if labels:
            draw.text((index * width + 2, 0), labels[index], fill="black")
    return strip


def prefix_decoding_strip(
    pipe,
    image_or_ids,
    prefix_lengths: Sequence[int] | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float = 1.0,
    seed: int = 0,
    include_original: bool = True,
    labels: bool = True,
    return_images: bool = False,
):
    """Decode with the first ``n`` tokens for each ``n`` in ``prefix_lengths`` (paper Fig. 8 / 17).

    Args:
        pipe: a :class:`DDTDecoderPipeline`.
        image_or_ids: one image (PIL, array, tensor in [0, 1], path) or its ids `[T]`.
        prefix_lengths: ints in [1, T]; defaults to 1, 2, 4, ..., T.
        include_original: put the input image first when an image was given.
    Returns:
        A PIL image (one tile per prefix, labelled ``n=...``), or ``(strip, [tiles])`` with ``return_images``.
    """
    total = pipe.num_tokens
    if prefix_lengths is None:
        prefix_lengths, n = [], 1
        while n < total:
            prefix_lengths.append(n)
            n *= 2
        prefix_lengths.append(total)
    if isinstance(prefix_lengths, int) or not isinstance(prefix_lengths, Sequence) or len(prefix_lengths) == 0:
        raise ValueError(f"`prefix_lengths` must be a non-empty list of ints in [1, {total}], got {describe(prefix_lengths)}.")
    prefix_lengths = [check_int("prefix_lengths", n, minimum=1, maximum=total) for n in prefix_lengths]
    ids = _as_ids(pipe, image_or_ids, "image_or_ids")
    batch = len(prefix_lengths)
    tiles = pipe(
        token_ids=ids[None].expand(batch, -1),
        max_tokens=prefix_lengths,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        latents=_shared_noise(pipe, batch, seed),
        output_type="pil",
    ).images
    names = [f"n={n}" for n in prefix_lengths]
    shown = list(tiles)
    if include_original and not isinstance(image_or_ids, (torch.Tensor, list, tuple)):
        original = pipe.tokenizer_image_processor(image_or_ids, return_tensors="pt")["pixel_values"]
        shown.insert(0, pipe.image_processor.postprocess(original, output_type="pil")[0])
        names.insert(0, "input")
    strip = _strip(shown, names if labels else None)
    return (strip, tiles) if return_images else strip


def counterfactual_interpolation(
    pipe,
    ids_a,
    ids_b,
    span: tuple[int, int] | Sequence[tuple[int, int]] = (0, 1),
    num_inference_steps: int = 25,
    guidance_scale: float = 1.0,
    seed: int = 0,
    return_strip: bool = False,
):
    """Replace tokens ``span = (start, end)`` (``start`` inclusive, ``end`` exclusive) of A by B's and decode
    (paper Fig. 6 / 16). Several spans may be given as a list of pairs.

    Returns ``[decode(A), decode(A with B's span) for each span, decode(B)]`` as PIL images, or a labelled
    strip of them with ``return_strip``.
    """
    total = pipe.num_tokens
    spans = [span] if isinstance(span, tuple) and len(span) == 2 and all(isinstance(s, int) for s in span) else span
    if not isinstance(spans, Sequence) or len(spans) == 0:
        raise ValueError(f"`span` must be a (start, end) pair or a list of pairs, got {describe(span)}.")
    checked = []
    for pair in spans:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"`span` must be (start, end) pairs, got {describe(pair)}.")
        start = check_int("span", pair[0], minimum=0, maximum=total - 1)
        end = check_int("span", pair[1], minimum=1, maximum=total)
        if end <= start:
            raise ValueError(f"`span` must satisfy 0 <= start < end <= {total}, got ({start}, {end}).")
        checked.append((start, end))
    a = _as_ids(pipe, ids_a, "ids_a")
    b = _as_ids(pipe, ids_b, "ids_b")
    variants = [a]
    for start, end in checked:
        mixed = a.clone()
        mixed[start:end] = b[start:end]
        variants.append(mixed)
    variants.append(b)
    images = pipe(
        token_ids=torch.stack(variants),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        latents=_shared_noise(pipe, len(variants), seed),
        output_type="pil",
    ).images
    if return_strip:
        names = ["A"] + [f"A<-B[{s}:{e}]" for s, e in checked] + ["B"]
        return _strip(images, names)
    return images


__all__ = ["counterfactual_interpolation", "prefix_decoding_strip"]
