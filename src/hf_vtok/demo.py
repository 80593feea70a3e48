"""``hf-vtok demo``: the end-to-end tour on the built-in shapes world.

1. Generates the shapes world and writes a PNG grid of scenes with their instance masks and captions.
2. For every tokenizer family with a small trained checkpoint shipped inside the package
   (``hf_vtok/checkpoints/<family>``), or retrained with ``--train``: tokenizes the scenes, writes
   reconstructions and token maps as PNG, and prints the family's metrics.

Everything runs on CPU in minutes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .validation import check_int, describe

CHECKPOINTS_DIR = Path(__file__).parent / "checkpoints"


@dataclass
class DemoContext:
    out_dir: Path
    dataset: object  # datasets.Dataset of demo scenes (textured)
    train: bool
    seed: int
    metrics: dict = field(default_factory=dict)


# name -> function(context) run for each family; families add themselves in `_family_sections`.
def _family_sections() -> dict[str, Callable[[DemoContext], dict]]:
    return {}


def _shapes_section(context: DemoContext, flat_dataset) -> None:
    from .visualization import make_grid, overlay_masks, save_png

    tiles, captions = [], []
    for row in context.dataset:
        tiles += [row["image"], overlay_masks(row["image"], row["mask"])]
        count = len(row["objects"])
        captions += [row["caption"], f"{count} object{'' if count == 1 else 's'}"]
    path = save_png(make_grid(tiles, ncols=8, captions=captions, tile_size=128), context.out_dir / "shapes_world.png")
    flat = [row["image"] for row in flat_dataset]
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
    from .data.shapes import generate_shapes_dataset

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
    flat = generate_shapes_dataset(num_images, seed=seed, style="flat", with_edits=False, progress=False)
    context = DemoContext(out_dir=out_dir, dataset=dataset, train=train, seed=seed)
    _shapes_section(context, flat)
    for name, section in sections.items():
        context.metrics[name] = section(context)
    context.metrics["seconds"] = round(time.perf_counter() - start, 1)
    (out_dir / "metrics.json").write_text(json.dumps(context.metrics, indent=2))
    print(f"[demo] done in {context.metrics['seconds']} s; pictures and metrics.json in {out_dir}")
    return context.metrics
