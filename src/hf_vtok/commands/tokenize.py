"""``hf-vtok tokenize``: images → a file of visual tokens (ids, or SeTok's embeddings), read back by ``reconstruct``.

The file's format follows its extension:

* ``.json``: ``{"format", "tokenizer": {...}, "images": [{"source", "size", "num_tokens", "ids" | "embeddings"}]}``;
* ``.safetensors``: ``ids`` `[B, N]` (discrete) or ``embeddings`` `[B, N, D]` + ``attention_mask`` `[B, N]`, with
  the JSON above (less the tokens) in the metadata entry ``hf_vtok``;
* ``.npy``: the ids `[B, N]` alone (discrete tokenizers only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FORMAT = "hf_vtok.tokens/1"
SUFFIXES = (".json", ".safetensors", ".npy")

EXAMPLES = """\
Examples:
  hf-vtok tokenize scene.png --out ids.json                         # the shipped DDT tokenizer
  hf-vtok tokenize a.png b.png --tokenizer shipped:slot_qformer --out ids.safetensors
  hf-vtok tokenize photo.jpg --tokenizer shipped:setok --out tokens.json   # SeTok: embeddings, variable count
  hf-vtok tokenize https://example.com/cat.png --tokenizer runs/my_ddt --out ids.npy
"""


def tokenize_images(model, image_processor, images: list) -> list[dict]:
    """One record per image: ``num_tokens`` and ``ids`` (discrete) or ``embeddings`` (the real tokens only)."""
    import torch

    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        tokens = model.encode(pixel_values.to(device=model.device, dtype=model.dtype))
    mask = tokens.attention_mask.bool()
    if tokens.ids is not None:
        return [{"num_tokens": int(row.numel()), "ids": row.tolist()} for row in tokens.ids]
    return [{"num_tokens": int(keep.sum()), "embeddings": row[keep].float().tolist()} for row, keep in zip(tokens.embeddings, mask)]


def tokenizer_record(model, source: str) -> dict:
    from .checkpoints import tokenizer_fingerprint

    config = model.config
    return {
        "source": source,
        "model_type": config.model_type,
        "fingerprint": tokenizer_fingerprint(model),
        "discrete": getattr(config, "codebook_size", None) is not None,
        "codebook_size": getattr(config, "codebook_size", None),
        "num_visual_tokens": config.num_visual_tokens,
        "token_order": getattr(config, "token_order", None),
        "image_size": config.image_size,
    }


def write_tokens(path: Path, tokenizer: dict, records: list[dict]) -> None:
    document = {"format": FORMAT, "tokenizer": tokenizer, "images": records}
    if path.suffix == ".json":
        path.write_text(json.dumps(document))
        return
    import numpy as np

    header = {**document, "images": [{key: value for key, value in record.items() if key not in ("ids", "embeddings")} for record in records]}
    if tokenizer["discrete"]:
        tensors = {"ids": np.asarray([record["ids"] for record in records], dtype=np.int64)}
    else:
        longest = max(record["num_tokens"] for record in records)
        width = len(records[0]["embeddings"][0])
        embeddings = np.zeros((len(records), longest, width), dtype=np.float32)
        attention_mask = np.zeros((len(records), longest), dtype=np.int64)
        for row, record in enumerate(records):
            embeddings[row, : record["num_tokens"]] = record["embeddings"]
            attention_mask[row, : record["num_tokens"]] = 1
        tensors = {"embeddings": embeddings, "attention_mask": attention_mask}
    if path.suffix == ".npy":
        np.save(path, tensors["ids"])
    else:
        from safetensors.numpy import save_file

        save_file(tensors, str(path), metadata={"hf_vtok": json.dumps(header)})


def read_tokens(path: str, argument: str = "IDS") -> dict:
    """The document :func:`write_tokens` wrote (``.npy``: ids only, ``"tokenizer"`` is None)."""
    import numpy as np

    file = Path(path)
    if file.suffix not in SUFFIXES:
        raise ValueError(f"`{argument}` must be a {'/'.join(SUFFIXES)} file written by `hf-vtok tokenize`, got {path!r}.")
    if not file.is_file():
        raise ValueError(f"`{argument}` {path!r} does not exist.")
    try:
        if file.suffix == ".json":
            document = json.loads(file.read_text())
        elif file.suffix == ".npy":
            ids = np.load(file, allow_pickle=False)
            if ids.ndim != 2 or ids.dtype.kind not in "iu":
                raise ValueError(f"expected an integer array [images, tokens], got {ids.dtype} {ids.shape}")
            document = {"format": FORMAT, "tokenizer": None, "images": [{"ids": row.tolist(), "num_tokens": len(row)} for row in ids]}
        else:
            from safetensors import safe_open

            with safe_open(str(file), framework="np") as handle:
                document = json.loads(handle.metadata()["hf_vtok"])
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118  (not a mapping)
            for row, record in enumerate(document["images"]):
                if "ids" in tensors:
                    record["ids"] = tensors["ids"][row].tolist()
                else:
                    record["embeddings"] = tensors["embeddings"][row, : record["num_tokens"]].tolist()
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise ValueError(f"`{argument}` {path!r} is not a token file written by `hf-vtok tokenize` ({error}).") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("images"), list) or not document["images"]:
        raise ValueError(f"`{argument}` {path!r} is not a token file written by `hf-vtok tokenize` (format {FORMAT}).")
    kind = "ids" if isinstance(document["images"][0], dict) and "ids" in document["images"][0] else "embeddings"
    for index, record in enumerate(document["images"]):
        tokens = record.get(kind) if isinstance(record, dict) else None
        if not isinstance(tokens, list) or not tokens:
            raise ValueError(f"`{argument}` {path!r}: image {index} has no {kind} list (every image needs one).")
        record["num_tokens"] = len(tokens)
    return document


def run(args: argparse.Namespace) -> int:
    from .checkpoints import load_images, load_tokenizer, map_with_estimate

    out = Path(args.out)
    if out.suffix not in SUFFIXES:
        raise ValueError(f"`--out` must end in {', '.join(SUFFIXES)}, got {args.out!r}.")
    images = load_images(args.images)
    model, image_processor = load_tokenizer(args.tokenizer)
    tokenizer = tokenizer_record(model, args.tokenizer)
    if out.suffix == ".npy" and not tokenizer["discrete"]:
        raise ValueError(f"`--out` .npy holds ids only, but {model.config.model_type} makes embeddings: write .json or .safetensors.")
    records = map_with_estimate(
        lambda image: tokenize_images(model, image_processor, [image])[0], images, f"tokenizing with {model.config.model_type}"
    )
    for source, image, record in zip(args.images, images, records):
        record.update(source=source, size=list(image.size))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_tokens(out, tokenizer, records)
    kind = "ids" if tokenizer["discrete"] else "embeddings"
    for record in records:
        print(f"{record['source']}: {record['num_tokens']} {kind} ({tokenizer['token_order']} order)")
    print(f"wrote {len(records)} image(s) of {kind} from {args.tokenizer} to {out}")
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    from .checkpoints import add_command, add_images_argument

    parser = add_command(
        commands,
        "tokenize",
        help="images → a file of visual token ids (or SeTok embeddings)",
        description="Encode images with a visual tokenizer and write per-image ids (discrete tokenizers) or embeddings "
        "(SeTok), their count and order, the tokenizer and the image sizes. The file's extension picks the format: "
        ".json, .safetensors or .npy (ids only). `hf-vtok reconstruct` turns it back into images.",
        examples=EXAMPLES,
    )
    add_images_argument(parser)
    parser.add_argument(
        "--tokenizer", default="shipped:ddt",
        help="shipped:<family> or a tokenizer / training-run folder (default: shipped:ddt)",
    )
    parser.add_argument("--out", default="tokens.json", help="output file: .json, .safetensors or .npy (default: tokens.json)")
    parser.set_defaults(handler=run)
