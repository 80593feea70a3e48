"""``hf-vtok visualize``: what each visual token covers, as PNG.

Tokenizers with per-patch assignments (SlotQFormer's slot attention, SeTok's clusters) get their hard token map
overlaid on each image; DDT, whose tokens are global, gets a prefix-decoding strip (the image decoded from its first
1, 2, 4, ... tokens: coarse to fine). Writes one PNG per image, an overview grid and ``visualize.json``.
"""

from __future__ import annotations

import argparse
import inspect
import json

from .arguments import non_negative_int, positive_int

EXAMPLES = """\
Examples:
  hf-vtok visualize scene.png --out maps/                            # slot maps of the shipped SlotQFormer
  hf-vtok visualize a.png b.png --tokenizer shipped:setok --out maps/  # SeTok's clusters
  hf-vtok visualize scene.png --tokenizer shipped:ddt --steps 25 --out strips/   # DDT: prefix decoding strip
"""


def _token_map(model, image_processor, image):
    """``(image as the tokenizer sees it, hard group map [h, w], real token count)``, or None without assignments."""
    import torch

    from ..evaluation.tokenizers import assignment_maps

    pixel_values = image_processor([image], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        tokens = model.encode(pixel_values.to(device=model.device, dtype=model.dtype))
    if tokens.assignments is None:
        return None
    shown = image_processor.postprocess_pixel_values(pixel_values)[0].permute(1, 2, 0).numpy()
    labels = assignment_maps(tokens.assignments, tokens.attention_mask)[0]
    return shown, labels, int(tokens.attention_mask.sum())


def run(args: argparse.Namespace) -> int:
    from ..evaluation.visualization import make_grid, overlay_masks, save_png
    from .checkpoints import (
        image_name,
        load_decoder,
        load_images,
        load_tokenizer,
        map_with_estimate,
        output_folder,
    )

    images = load_images(args.images)
    model, image_processor = load_tokenizer(args.tokenizer)
    family = model.config.model_type
    out = output_folder(args.out)
    entries, tiles, captions = [], [], []
    maps = map_with_estimate(lambda image: _token_map(model, image_processor, image), images, f"token maps of {family}")
    if maps[0] is not None:
        overlays = [overlay_masks(shown, labels, background_id=None) for shown, labels, _ in maps]
        for index, (source, overlay, (shown, labels, count)) in enumerate(zip(args.images, overlays, maps)):
            path = save_png(overlay, out / f"{image_name(index, source)}_tokens.png")
            groups = len(set(labels.ravel().tolist()))
            entries.append({"file": path.name, "source": source, "num_tokens": count, "num_groups": groups, "map_size": list(labels.shape)})
            tiles += [shown, overlay]
            captions += [source.split("/")[-1], f"{count} tokens, {groups} groups"]
            print(f"{source}: {groups} token groups over {labels.shape[0]}x{labels.shape[1]} patches -> {path}")
        grid = make_grid(tiles, ncols=2, captions=captions, tile_size=160)
        kind = "token_maps"
    else:
        from ..models.ddt import prefix_decoding_strip

        pipe = load_decoder(args.decoder or args.tokenizer)
        if "max_tokens" not in inspect.signature(pipe.__call__).parameters:
            raise ValueError(
                f"`--tokenizer` {args.tokenizer!r} ({family}) gives no token assignments to draw and its decoder cannot "
                "decode token prefixes: nothing to visualize."
            )
        strips = map_with_estimate(
            lambda image: prefix_decoding_strip(pipe, image, num_inference_steps=args.steps, seed=args.seed),
            images,
            f"prefix decoding with {family} ({args.steps} steps per prefix)",
        )
        for index, (source, strip) in enumerate(zip(args.images, strips)):
            path = save_png(strip, out / f"{image_name(index, source)}_prefixes.png")
            entries.append({"file": path.name, "source": source, "num_tokens": pipe.num_tokens})
            print(f"{source}: decoded from growing token prefixes -> {path}")
        grid = make_grid(strips, ncols=1)
        kind = "prefix_decoding"
    grid_path = save_png(grid, out / f"{kind}.png")
    summary = {"tokenizer": args.tokenizer, "model_type": family, "kind": kind, "grid": grid_path.name, "images": entries}
    if kind == "prefix_decoding":
        summary.update(num_inference_steps=args.steps, seed=args.seed)
    (out / "visualize.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {len(entries)} picture(s), {grid_path.name} and visualize.json to {out}")
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    from .checkpoints import add_command, add_images_argument

    parser = add_command(
        commands,
        "visualize",
        help="token maps (slots, clusters) or DDT prefix strips of images, as PNG",
        description="Draw what the visual tokens of each image cover: the hard slot-attention / cluster map overlaid on "
        "the image (SlotQFormer, SeTok), or for DDT, whose tokens have no spatial map, the image decoded from its "
        "first 1, 2, 4, ... tokens. Writes one PNG per image, a grid of all and visualize.json.",
        examples=EXAMPLES,
    )
    add_images_argument(parser)
    parser.add_argument(
        "--tokenizer", default="shipped:slot_qformer",
        help="shipped:<family> or a tokenizer / training-run folder (default: shipped:slot_qformer)",
    )
    parser.add_argument("--decoder", default=None, help="DDT prefix strips: the decoder folder (default: --tokenizer's)")
    parser.add_argument("--out", default="token_maps", help="output folder (default: token_maps)")
    parser.add_argument("--steps", type=positive_int, default=25, help="DDT: denoising steps per prefix (default: 25)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="DDT: seed of the shared decoder noise (default: 0)")
    parser.set_defaults(handler=run)
