"""``hf-vtok reconstruct``: a token file of ``hf-vtok tokenize`` (or images, round trip) → images through the
family's decoder pipeline; PNGs plus ``reconstruct.json`` (seed, steps, guidance, sizes)."""

from __future__ import annotations

import argparse
import inspect
import json
import sys

from .arguments import non_negative_int, positive_int

EXAMPLES = """\
Examples:
  hf-vtok tokenize scene.png --out ids.json && hf-vtok reconstruct ids.json --out recon/
  hf-vtok reconstruct ids.json --max-tokens 4 --out coarse/       # DDT: decode the first 4 tokens only
  hf-vtok reconstruct --images a.png b.png --decoder shipped:slot_qformer --steps 50 --seed 3 --out recon/
  hf-vtok reconstruct tokens.safetensors --decoder runs/my_setok --guidance-scale 1 --out recon/
"""


def _check_tokens(document: dict, pipe, argument: str = "IDS") -> None:
    """The token file must come from the decoder's tokenizer family, with ids in its codebook."""
    from .checkpoints import tokenizer_fingerprint

    tokenizer = pipe.tokenizer
    config = tokenizer.config
    recorded = document.get("tokenizer") or {}
    if recorded.get("model_type") not in (None, config.model_type):
        raise ValueError(
            f"`{argument}` holds {recorded['model_type']} tokens but the decoder reads {config.model_type} tokens; "
            "pass the matching --decoder."
        )
    records = document["images"]
    if "ids" in records[0]:
        if not tokenizer.is_discrete:  # SeTok: continuous tokens, rendered from embeddings
            raise ValueError(f"`{argument}` holds ids but the {config.model_type} decoder renders embeddings.")
        for index, record in enumerate(records):
            ids, codebook = record["ids"], config.codebook_size
            if not 1 <= len(ids) <= config.num_visual_tokens or len(ids) != len(records[0]["ids"]):
                raise ValueError(
                    f"`{argument}` image {index} has {len(ids)} ids; the decoder takes up to {config.num_visual_tokens}, "
                    "the same count for every image."
                )
            if not all(isinstance(i, int) and 0 <= i < codebook for i in ids):
                raise ValueError(f"`{argument}` image {index} has ids outside the codebook [0, {codebook}).")
    elif any(len(row) != config.token_embedding_dim for record in records for row in record["embeddings"]):
        raise ValueError(f"`{argument}` embeddings must have {config.token_embedding_dim} values per token ({config.model_type}).")
    if recorded.get("fingerprint") not in (None, tokenizer_fingerprint(tokenizer)):
        print(
            f"hf-vtok reconstruct: warning: the tokens come from another {config.model_type} tokenizer "
            f"({recorded.get('source')}) than the decoder's; the images will not match",
            file=sys.stderr,
        )


def _decode_call(record: dict) -> dict:
    import torch

    if "ids" in record:
        return {"token_ids": torch.tensor([record["ids"]])}
    return {"token_embeddings": torch.tensor([record["embeddings"]]), "attention_mask": torch.ones(1, record["num_tokens"], dtype=torch.long)}


def run(args: argparse.Namespace) -> int:
    import torch

    from ..utils.validation import check_float
    from .checkpoints import image_name, load_decoder, load_images, map_with_estimate, output_folder
    from .tokenize import read_tokens

    if (args.ids is None) == (args.images is None):
        raise ValueError("Give either a token file (IDS) or --images, not both and not neither.")
    if args.guidance_scale is not None:
        check_float("--guidance-scale", args.guidance_scale, minimum=0.0)
    if args.ids is not None:
        document = read_tokens(args.ids)
        inputs = document["images"]
        default_decoder = (document.get("tokenizer") or {}).get("source") or "shipped:ddt"
    else:
        images = load_images(args.images, "--images")
        inputs = [{"source": source, "size": list(image.size), "image": image} for source, image in zip(args.images, images)]
        default_decoder = "shipped:ddt"
    decoder_source = args.decoder or default_decoder
    pipe = load_decoder(decoder_source, "--decoder" if args.decoder else "--decoder (default: the tokenizer recorded in IDS)")
    parameters = inspect.signature(pipe.__call__).parameters
    options = {"num_inference_steps": args.steps, "output_type": "pil"}
    if args.guidance_scale is not None:
        options["guidance_scale"] = args.guidance_scale
    if args.max_tokens is not None:
        if "max_tokens" not in parameters:
            raise ValueError(f"`--max-tokens` (prefix decoding) needs a DDT decoder, got a {type(pipe).__name__}.")
        total = pipe.tokenizer.config.num_visual_tokens
        if args.max_tokens > total:
            raise ValueError(f"`--max-tokens` must be at most the tokenizer's {total} tokens, got {args.max_tokens}.")
        options["max_tokens"] = args.max_tokens
    if args.ids is not None:
        _check_tokens(document, pipe)
    out = output_folder(args.out)
    family = pipe.tokenizer.config.model_type

    def decode(indexed):
        index, record = indexed
        source = {"images": [record["image"]]} if "image" in record else _decode_call(record)
        generator = torch.Generator().manual_seed(args.seed + index)
        return pipe(**source, generator=generator, **options).images[0]

    reconstructions = map_with_estimate(decode, list(enumerate(inputs)), f"reconstructing with {family} ({args.steps} steps)")
    entries = []
    for index, (record, image) in enumerate(zip(inputs, reconstructions)):
        path = out / f"{image_name(index, record.get('source'))}.png"
        image.save(path)
        entries.append({"file": path.name, "source": record.get("source"), "input_size": record.get("size"),
                        "output_size": list(image.size), "seed": args.seed + index})
        print(f"{record.get('source') or f'image {index}'} -> {path} ({image.size[0]}x{image.size[1]})")
    summary = {
        "decoder": decoder_source,
        "tokens": args.ids,
        "num_inference_steps": args.steps,
        "guidance_scale": options.get("guidance_scale", pipe.checkpoint_guidance_scale),
        "max_tokens": options.get("max_tokens"),
        "seed": args.seed,
        "images": entries,
    }
    (out / "reconstruct.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {len(entries)} image(s) and reconstruct.json to {out}")
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    from .checkpoints import add_command

    parser = add_command(
        commands,
        "reconstruct",
        help="token file (or images) → images through the tokenizer's diffusion decoder",
        description="Render the tokens of an `hf-vtok tokenize` file, or round-trip images with --images, through the "
        "family's decoder pipeline. Writes one PNG per image and reconstruct.json (decoder, steps, guidance, seeds and "
        "the input/output sizes: the tiny decoders may render at another resolution than the input).",
        examples=EXAMPLES,
    )
    parser.add_argument("ids", nargs="?", default=None, metavar="IDS", help="token file from `hf-vtok tokenize` (.json, .safetensors, .npy)")
    parser.add_argument("--images", nargs="+", default=None, metavar="IMAGE", help="images to round-trip instead of a token file")
    parser.add_argument(
        "--decoder", default=None,
        help="shipped:<family> or a folder with decoder/ (default: the tokenizer recorded in IDS, else shipped:ddt)",
    )
    parser.add_argument("--out", default="reconstructions", help="output folder (default: reconstructions)")
    parser.add_argument("--steps", type=positive_int, default=25, help="denoising steps (default: 25)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of image i is SEED + i (default: 0)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the decoder's)")
    parser.add_argument("--max-tokens", type=positive_int, default=None, help="DDT: decode from the first N tokens only")
    parser.set_defaults(handler=run)
