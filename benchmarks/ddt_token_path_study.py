"""Which half of DDT's token path learns slowly at toy scale? (docs/ddt.md, "The token path, part by part")

DDT's tokenizer is trained here as a deterministic regression through its tokens: t = 1 only, x0 target, the
quantiser bypassed (continuous L2-normalised codes), so only the encoder → 192 codes → decoder path is measured.
Either half can be swapped for a small convolutional network that places the 192 codes exactly on the token anchors
(3 codes per cell of the 8 x 8 grid, in the anchor order of `coarse_to_fine_order`), and a few decoder variants can be
switched on. The printed figure is the one-step decode of 64 held-out scenes (seeds 900 flat / 901 textured) through
the TAEF2 decoder, PSNR in dB, every 100 steps.

    python benchmarks/ddt_token_path_study.py --encoder transformer --decoder mmdit --steps 400
    python benchmarks/ddt_token_path_study.py --encoder conv --decoder mmdit --no-token-positions
    python benchmarks/ddt_token_path_study.py --no-token-positions --anchor-init --anchor-injection [--quantize]

Diagnostic only. The training data (2,400 scenes, half
flat seed 100, half textured seed 101, and their TAEF2 latents) is cached in --cache. About 1.3 s per step with the
transformer halves on one CPU thread.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hf_vtok.data import generate_shapes_dataset
from hf_vtok.evaluation.metrics import psnr
from hf_vtok.models.ddt.configuration_ddt import DDTTokenizerConfig
from hf_vtok.models.ddt.modeling_ddt import DDTTokenizerForPreTraining
from hf_vtok.models.ddt.modeling_ddt_decoder import coarse_to_fine_order
from hf_vtok.utils.autoencoder_taef2 import load_taef2
from hf_vtok.utils.modeling_utils import encode_latents as encode_latents_of
from hf_vtok.utils.modeling_utils import sinusoidal_embedding_1d

GRID, TOKENS, CODE_DIM, LATENT_CHANNELS = 8, 192, 16, 32
PER_CELL = TOKENS // (GRID * GRID)


def scenes(n: int, style: str, seed: int) -> torch.Tensor:
    dataset = generate_shapes_dataset(n, image_size=128, style=style, seed=seed, progress=False)
    images = np.stack([np.asarray(image.convert("RGB")) for image in dataset["image"]])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@torch.inference_mode()
def encode_latents(vae, images_u8: torch.Tensor) -> torch.Tensor:
    return torch.cat([encode_latents_of(vae, images_u8[i : i + 64].float() / 127.5 - 1) for i in range(0, len(images_u8), 64)])


def load_data(cache: Path, vae) -> dict[str, torch.Tensor]:
    if cache.exists():
        return torch.load(cache)
    train = torch.cat([scenes(1200, "flat", 100), scenes(1200, "textured", 101)])
    held_out = torch.cat([scenes(32, "flat", 900), scenes(32, "textured", 901)])
    data = {"train_u8": train, "train_lat": encode_latents(vae, train).half(),
            "eval_u8": held_out, "eval_lat": encode_latents(vae, held_out)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, cache)
    return data


def conv_block(channels_in: int, channels_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1), nn.GroupNorm(8, channels_out), nn.SiLU()]


class ConvTokenEncoder(nn.Module):
    """Latents [B, 32, 16, 16] → codes [B, 192, 16], code ``k * 64 + j`` computed at anchor cell ``order[j]``."""

    def __init__(self, order: torch.LongTensor):
        super().__init__()
        self.register_buffer("order", order, persistent=False)
        self.net = nn.Sequential(*conv_block(LATENT_CHANNELS, 128), *conv_block(128, 128, stride=2),
                                 *conv_block(128, 128), nn.Conv2d(128, PER_CELL * CODE_DIM, 1))

    def forward(self, latents):
        cells = self.net(latents).flatten(2)[:, :, self.order]  # [B, 3 * 16, 64] in anchor order
        return cells.view(len(latents), PER_CELL, CODE_DIM, GRID * GRID).transpose(2, 3).reshape(-1, TOKENS, CODE_DIM)


class ConvTokenDecoder(nn.Module):
    """Codes [B, 192, 16] placed back on their anchor cells → latents [B, 32, 16, 16]."""

    def __init__(self, order: torch.LongTensor):
        super().__init__()
        self.register_buffer("inverse", torch.argsort(order), persistent=False)
        self.net = nn.Sequential(*conv_block(PER_CELL * CODE_DIM, 128), *conv_block(128, 128), nn.Upsample(scale_factor=2),
                                 *conv_block(128, 128), nn.Conv2d(128, LATENT_CHANNELS, 3, padding=1))

    def forward(self, codes):
        batch = len(codes)
        cells = codes.view(batch, PER_CELL, GRID * GRID, CODE_DIM).transpose(2, 3).reshape(batch, -1, GRID * GRID)
        return self.net(cells[:, :, self.inverse].view(batch, -1, GRID, GRID))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", choices=["transformer", "conv"], default="transformer")
    parser.add_argument("--decoder", choices=["mmdit", "conv"], default="mmdit")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--no-token-positions", action="store_true", help="decoder_config.token_position_embedding=False")
    parser.add_argument("--token-position-scale", type=float, default=None,
                        help="keep the token positions, multiplied by this (implies --no-token-positions for the library's own)")
    parser.add_argument("--decoder-prior", type=float, default=0.5, help="decoder_config.token_locality_prior")
    parser.add_argument("--encoder-prior", type=float, default=0.5, help="query_locality_prior (query → image patches)")
    parser.add_argument("--query-query-prior", type=float, default=0.0,
                        help="query_query_locality_prior: the encoder queries' attention to each other")
    parser.add_argument("--anchor-init", action="store_true",
                        help="query_anchor_init: each encoder query starts from its anchor patch's embedding")
    parser.add_argument("--anchor-injection", action="store_true",
                        help="decoder_config.token_anchor_injection: each MMDiT patch adds its cell's tokens to its input")
    parser.add_argument("--quantize", action="store_true",
                        help="quantise the codes with the library's EMA codebook (1024 codes, k-means start) instead of "
                             "leaving them continuous")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/.cache/ddt_token_path.pt"))
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")

    torch.set_num_threads(args.threads)
    vae = load_taef2().eval()
    data = load_data(args.cache, vae)
    torch.manual_seed(0)
    token_positions = not (args.no_token_positions or args.token_position_scale is not None)
    config = DDTTokenizerConfig.tiny(
        image_size=128, patch_size=16, num_visual_tokens=TOKENS, hidden_size=128, num_hidden_layers=4,
        num_attention_heads=4, codebook_size=1024, codebook_dim=CODE_DIM, codebook_kmeans_init=args.quantize, loss_target="x0", query_locality_prior=args.encoder_prior,
        query_query_locality_prior=args.query_query_prior, query_anchor_init=args.anchor_init,
        decoder_config={"patch_size": 2, "in_channels": LATENT_CHANNELS, "num_layers": 4, "num_attention_heads": 4,
                        "attention_head_dim": 32, "vae_scale_factor": 8, "sample_size": 16,
                        "token_position_embedding": token_positions, "token_locality_prior": args.decoder_prior,
                        "token_anchor_injection": args.anchor_injection},
    )
    model = DDTTokenizerForPreTraining(config)
    order = coarse_to_fine_order(GRID)
    conv_encoder = ConvTokenEncoder(order) if args.encoder == "conv" else None
    conv_decoder = ConvTokenDecoder(order) if args.decoder == "conv" else None
    for name, module in (("conv_encoder", conv_encoder), ("conv_decoder", conv_decoder)):
        if module is not None:
            model.add_module(name, module)

    tokenizer = model.tokenizer

    quantization_loss = torch.zeros(())

    def encode(images_u8, latents):
        nonlocal quantization_loss
        z = conv_encoder(latents) if conv_encoder is not None else tokenizer.encode_features(images_u8.float() / 127.5 - 1)
        if not args.quantize:
            return F.normalize(z, dim=-1)
        if tokenizer.training:
            tokenizer._relative_dead_code_threshold(z.shape[0] * z.shape[1])
        output = tokenizer.quantizer(z)  # the library's EMA codebook: straight-through codes + commitment loss
        quantization_loss = output.loss
        return output.quantized

    def decode(codes):
        if conv_decoder is not None:
            return conv_decoder(codes)
        t = torch.ones(len(codes))
        context, mask = model.conditioner(codes, model.conditioner.num_visible_tokens(t))
        if args.token_position_scale is not None:
            context = context + args.token_position_scale * sinusoidal_embedding_1d(
                torch.arange(context.shape[1]), context.shape[-1])
        x_t = torch.zeros(len(codes), LATENT_CHANNELS, 16, 16)  # the noise mean at t = 1
        velocity = model.transformer(x_t, timestep=t * 1000, encoder_hidden_states=context,
                                     encoder_attention_mask=mask).sample
        return x_t - velocity  # x0 = x_t - t·v

    def evaluate(step):
        model.eval()
        with torch.inference_mode():
            latents = decode(encode(data["eval_u8"], data["eval_lat"]))
            images = (vae.decode(vae.unscale_latents(latents)).sample.clamp(-1, 1) + 1) / 2
            scores = psnr(images, data["eval_u8"])  # per image, as `hf-vtok eval` measures it
        model.train()
        print(f"step {step}: one-step decode PSNR flat {scores[:32].mean():.2f} dB, textured {scores[32:].mean():.2f} dB",
              flush=True)

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, betas=(0.9, 0.99), weight_decay=0.0)
    train_u8, train_lat = data["train_u8"], data["train_lat"].float()
    generator = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = args.learning_rate * min(1.0, step / 50)
        batch = torch.randint(0, len(train_u8), (32,), generator=generator)
        loss = F.mse_loss(decode(encode(train_u8[batch], train_lat[batch])), train_lat[batch])
        if args.quantize:
            loss = loss + quantization_loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step % 25 == 0:
            print(f"step {step}: latent MSE {loss.item():.4f} ({(time.time() - start) / step:.2f} s/step)", flush=True)
        if step % 100 == 0 or step == args.steps:
            evaluate(step)


if __name__ == "__main__":
    main()
