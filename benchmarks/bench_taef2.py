"""TAEF2 latent autoencoder: round-trip PSNR, latent statistics, speed, and broken-architecture controls.

Measures what the model card (``src/hf_vtok/checkpoints/taef2/README.md``) reports:

* round-trip PSNR (float32, per-image PSNR on [0, 1] pixels, averaged) on shapes-world scenes (flat and
  textured, ``--scenes`` per style and size, ``--seed``) and on the photos bundled with scikit-image
  (astronaut, chelsea, coffee; centre square crop, PIL bicubic resize), plus the float16 model at 128 px;
* mean / std of the raw latents on the same shapes scenes (what ``shift_factor`` / ``scaling_factor``
  are set from) and on the photos;
* encode / decode seconds per image at 128 px, batch 8, median of 3, wall clock and process CPU time
  (``--threads``, default 1; ``--speed-only`` runs just this);
* the same PSNR for deliberately wrong variants (no tanh soft clamp, no GroupNorm branch, images fed in
  [-1, 1] without the [0, 1] conversion, two residual blocks' weights swapped), which must be far worse.

    PYTHONPATH=src python benchmarks/bench_taef2.py [--scenes 64] [--seed 1234] [--threads 1] [--json out.json] [--speed-only]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from PIL import Image

from hf_vtok.data import generate_shapes_dataset
from hf_vtok.utils.autoencoder_taef2 import load_taef2


def to_tensor(images, size: int) -> torch.Tensor:
    """PIL images → (B, 3, size, size) in [-1, 1] (centre square crop, bicubic resize)."""
    out = []
    for image in images:
        image = image.convert("RGB")
        w, h = image.size
        s = min(w, h)
        image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        if image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
    return torch.stack(out).float() / 127.5 - 1


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two [-1, 1] batches, on the [0, 1] scale."""
    mse = ((x.float() - y.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


@torch.inference_mode()
def round_trip(model, x: torch.Tensor, batch: int = 16):
    latents, recon = [], []
    for i in range(0, len(x), batch):
        z = model.encode(x[i : i + batch]).latents
        latents.append(z.float())
        recon.append(model.decode(z).sample.float())
    return torch.cat(latents), torch.cat(recon)


def photos():
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee")}


class _NoConversion(torch.nn.Module):
    """Wrong on purpose: feeds [-1, 1] images to the encoder and returns its [0, 1] output as [-1, 1]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def encode(self, x):
        return AutoencoderTinyOutput(latents=self.model.encoder(x.to(self.model.dtype)))

    def decode(self, z):
        return DecoderOutput(sample=self.model.decoder(z).clamp(-1, 1))


def wrong_variants(model):
    no_tanh = copy.deepcopy(model)
    no_tanh.decoder[0] = torch.nn.Identity()
    no_pool = copy.deepcopy(model)
    for block in list(no_pool.encoder) + list(no_pool.decoder):
        if getattr(block, "pool", None) is not None:
            block.pool = None
    swapped = copy.deepcopy(model)
    # Decoder blocks 8 and 9 (same stage, same shapes): a wrong index mapping that still loads.
    a, b = swapped.decoder[8].state_dict(), swapped.decoder[9].state_dict()
    swapped.decoder[8].load_state_dict(b)
    swapped.decoder[9].load_state_dict(a)
    return {
        "no tanh clamp": no_tanh,
        "no GroupNorm branch": no_pool,
        "no [0,1] conversion": _NoConversion(model),
        "decoder blocks 8/9 swapped": swapped,
    }


def speed(model, x: torch.Tensor, threads: int, repeats: int = 3) -> dict[str, float]:
    """Median seconds per image of encode and decode: wall clock and process CPU time.

    With one thread the CPU time is the better number on a shared machine (other jobs inflate the wall
    clock, much less the CPU time).
    """
    times: dict[str, list[float]] = {"encode_wall": [], "encode_cpu": [], "decode_wall": [], "decode_cpu": []}
    with torch.inference_mode():
        z = model.encode(x).latents  # warm-up
        model.decode(z)
        for _ in range(repeats):
            for name, call in (("encode", lambda: model.encode(x)), ("decode", lambda: model.decode(z))):
                wall, cpu = time.perf_counter(), time.process_time()
                call()
                times[f"{name}_wall"].append((time.perf_counter() - wall) / len(x))
                times[f"{name}_cpu"].append((time.process_time() - cpu) / len(x))
    result = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"speed {x.shape[-1]}px batch {len(x)}, {threads} thread(s), ms/image (wall / CPU): "
        f"encode {result['encode_wall'] * 1e3:.0f} / {result['encode_cpu'] * 1e3:.0f}, "
        f"decode {result['decode_wall'] * 1e3:.0f} / {result['decode_cpu'] * 1e3:.0f}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--speed-only", action="store_true", help="only the encode/decode timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_taef2(torch.float32)
    if args.speed_only:
        ds = generate_shapes_dataset(8, image_size=128, style="textured", seed=args.seed, with_edits=False)
        speed(model, to_tensor(ds["image"], 128), args.threads)
        return
    results: dict = {"scenes": args.scenes, "seed": args.seed, "threads": args.threads, "psnr": {}}

    shapes: dict[tuple[str, int], torch.Tensor] = {}
    raw = []
    for size in (64, 128):
        for style in ("flat", "textured"):
            ds = generate_shapes_dataset(
                args.scenes, image_size=size, style=style, seed=args.seed, with_edits=False, progress=False
            )
            x = to_tensor(ds["image"], size)
            shapes[(style, size)] = x
            z, y = round_trip(model, x)
            raw.append(z)
            p = psnr(x, y)
            results["psnr"][f"shapes_{style}_{size}"] = round(p.mean().item(), 2)
            print(f"shapes {style:8s} {size:3d}px: {p.mean():.2f} dB (min {p.min():.2f}, max {p.max():.2f})")
    channel_std = torch.cat([z.transpose(0, 1).flatten(1) for z in raw], dim=1).std(dim=1)
    raw = torch.cat([z.flatten() for z in raw])
    stats = {
        "mean": raw.mean().item(),
        "std": raw.std().item(),
        "channel_std_min": channel_std.min().item(),
        "channel_std_max": channel_std.max().item(),
    }
    print(
        f"raw latents, shapes world: mean {stats['mean']:.4f} std {stats['std']:.4f} "
        f"(per channel {channel_std.min():.3f}-{channel_std.max():.3f})"
    )
    for style in ("flat", "textured"):
        z = torch.cat([round_trip(model, shapes[(style, s)])[0].flatten() for s in (64, 128)])
        stats[f"{style}_mean"], stats[f"{style}_std"] = z.mean().item(), z.std().item()
        print(f"  {style}: mean {z.mean():.4f} std {z.std():.4f}")

    photo_latents = []
    for size in (64, 128, 256):
        for name, image in photos().items():
            x = to_tensor([image], size)
            z, y = round_trip(model, x)
            if size == 128:
                photo_latents.append(z.flatten())
            results["psnr"][f"photo_{name}_{size}"] = round(psnr(x, y).item(), 2)
            print(f"photo {name:9s} {size:3d}px: {psnr(x, y).item():.2f} dB")
    z = torch.cat(photo_latents)
    stats["photos_128_mean"], stats["photos_128_std"] = z.mean().item(), z.std().item()
    print(f"raw latents, photos 128px: mean {z.mean():.4f} std {z.std():.4f}")
    shift, scale = model.config.shift_factor, model.config.scaling_factor
    for key in ("flat", "textured", "photos_128"):
        m, s = stats[f"{key}_mean"], stats[f"{key}_std"]
        print(
            f"  scaled with config ({shift}, {scale}): {key} mean {(m - shift) * scale:.3f} std {s * scale:.3f}"
        )
    results["latent_stats"] = stats

    half = load_taef2(torch.float16)
    for style in ("flat", "textured"):
        x = shapes[(style, 128)]
        _, y = round_trip(half, x)
        results["psnr"][f"fp16_shapes_{style}_128"] = round(psnr(x, y).mean().item(), 2)
        print(f"float16 shapes {style:8s} 128px: {psnr(x, y).mean():.2f} dB")

    results["wrong_variants"] = {}
    for label, variant in wrong_variants(model).items():
        for style in ("flat", "textured"):
            x = shapes[(style, 128)][:16]
            _, y = round_trip(variant, x)
            results["wrong_variants"][f"{label} {style}"] = round(psnr(x, y).mean().item(), 2)
            print(f"WRONG {label:28s} {style:8s} 128px (16 scenes): {psnr(x, y).mean():.2f} dB")

    results["seconds_per_image_128px"] = speed(model, shapes[("textured", 128)][:8], args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
