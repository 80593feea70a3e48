"""Pre-tokenise an image dataset once, so that MLLM training reads integers (and packs sequences).

``pretokenize_dataset(tokenizer, dataset, out_dir)`` maps every image column of a ``datasets`` dataset
through a frozen visual tokenizer with a batched ``datasets.map`` (``num_proc`` worker processes) and writes
the result as parquet shards, one by one:

    out_dir/
      pretokenize.json          manifest: tokenizer, columns, row count, shard size, "complete"
      shard-00000.parquet       rows [0, shard_size)
      shard-00001.parquet       ...

Each image column ``c`` becomes ``c_ids`` (discrete tokenizers: ``list<int32>`` of ``num_visual_tokens`` ids in
the tokenizer's ``token_order``) or ``c_embeddings`` + ``c_num_tokens`` (continuous tokenizers such as SeTok:
``list<list<float32>>`` of each image's real tokens and their count). Other columns (captions, questions,
edit instructions) are kept; image and mask columns are dropped. Rows whose image is missing (e.g. scenes
without an edit) get ``None``.

The run is resumable: a shard is written to a temporary name and renamed when complete, and a shard whose
file exists is skipped, so a killed run continues where it stopped (``hf-vtok pretokenize`` again with the same
arguments). The manifest guards against mixing outputs of another tokenizer or dataset.
:func:`load_pretokenized` reads the shards back as one memory-mapped ``datasets.Dataset``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the tokenizer loaders live one layer down (the MLLM needs them too) and are re-exported here
from ..mllm.tokenizer_sources import (
    SHIPPED_CHECKPOINTS_DIR,
    load_visual_tokenizer,
    resolve_tokenizer_source,
    shipped_tokenizer_folders,
    tokenizer_fingerprint,
    tokenizer_subfolder,
)
from ..utils.validation import check_int, describe

MANIFEST_NAME = "pretokenize.json"
FORMAT = "hf_vtok.pretokenized/1"


@dataclass
class PretokenizeResult:
    """What :func:`pretokenize_dataset` did."""

    out_dir: Path
    num_rows: int
    num_shards: int
    shards_written: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)





def _default_image_columns(dataset) -> list[str]:
    from datasets import Image as ImageFeature

    features = dataset.features or {}
    columns = [name for name, feature in features.items() if isinstance(feature, ImageFeature) and "mask" not in name]
    if not columns and "image" in dataset.column_names:
        columns = ["image"]
    return columns


# ------------------------------------------------------------------------------------------- encoding
class _BatchEncoder:
    """The ``datasets.map`` function: images of one batch → ids or embeddings (picklable for ``num_proc``)."""

    def __init__(self, model, image_processor, image_columns, batch_size: int):
        self.model = model
        self.image_processor = image_processor
        self.image_columns = list(image_columns)
        self.batch_size = batch_size
        self.discrete = getattr(model.config, "codebook_size", None) is not None
        self._parent = os.getpid()

    def _encode(self, images: list) -> list:
        outputs = []
        parameter = next(self.model.parameters())
        for start in range(0, len(images), self.batch_size):
            chunk = [image.convert("RGB") if hasattr(image, "convert") else image for image in images[start : start + self.batch_size]]
            pixel_values = self.image_processor(chunk, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                tokens = self.model.encode(pixel_values.to(device=parameter.device, dtype=parameter.dtype))
            if self.discrete:
                outputs.extend(tokens.ids.to(torch.int32).cpu().numpy().tolist())
            else:
                embeddings = tokens.embeddings.float().cpu().numpy()
                mask = tokens.attention_mask.bool().cpu().numpy() if tokens.attention_mask is not None else None
                for row in range(embeddings.shape[0]):
                    real = embeddings[row] if mask is None else embeddings[row][mask[row]]
                    outputs.append(real.astype(np.float32).tolist())
        return outputs

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if os.getpid() != self._parent and torch.get_num_threads() > 1:
            torch.set_num_threads(1)  # a `num_proc` worker: one thread each, the workers are the parallelism
        out: dict[str, list] = {}
        for column in self.image_columns:
            images = batch[column]
            present = [index for index, image in enumerate(images) if image is not None]
            encoded = self._encode([images[index] for index in present]) if present else []
            values: list[Any] = [None] * len(images)
            for index, value in zip(present, encoded):
                values[index] = value
            if self.discrete:
                out[f"{column}_ids"] = values
            else:
                out[f"{column}_embeddings"] = values
                out[f"{column}_num_tokens"] = [None if value is None else len(value) for value in values]
        return out


def _output_features(dataset, image_columns, keep_columns, discrete: bool):
    from datasets import Features, Sequence, Value

    features = {name: dataset.features[name] for name in keep_columns}
    for column in image_columns:
        if discrete:
            features[f"{column}_ids"] = Sequence(Value("int32"))
        else:
            features[f"{column}_embeddings"] = Sequence(Sequence(Value("float32")))
            features[f"{column}_num_tokens"] = Value("int32")
    return Features(features)


def pretokenize_dataset(
    tokenizer,
    dataset,
    out_dir: str | os.PathLike,
    *,
    image_processor=None,
    image_columns: list[str] | None = None,
    keep_columns: list[str] | None = None,
    batch_size: int = 32,
    num_proc: int = 1,
    shard_size: int = 1024,
    overwrite: bool = False,
    split: str = "train",
    progress: bool = True,
) -> PretokenizeResult:
    """Tokenise every image of ``dataset`` once and write parquet shards to ``out_dir`` (resumable).

    Args:
        tokenizer: a tokenizer folder / training output folder, or a loaded ``VisualTokenizerMixin`` model (then pass
            ``image_processor`` too, or the family's default sized from the config is used).
        dataset: a ``datasets.Dataset`` or a source string for :func:`load_image_dataset`
            (``imagefolder:DIR``, ``parquet:GLOB``, ``webdataset:GLOB``, ``arrow:DIR``, a Hub name) or ``shapes:N``
            (the built-in shapes world with N scenes and their edits).
        out_dir: output folder (created).
        image_columns: columns to tokenise (default: every ``datasets.Image`` column whose name has no "mask").
        keep_columns: other columns to copy (default: every non-image column).
        batch_size: images per ``encode`` call and per ``datasets.map`` batch.
        num_proc: ``datasets.map`` worker processes.
        shard_size: rows per output shard (the unit of resumption).
        overwrite: start again even if ``out_dir`` holds another run's shards.
    """
    from datasets import Dataset
    from datasets import Image as ImageFeature

    batch_size = check_int("batch_size", batch_size, minimum=1)
    num_proc = check_int("num_proc", num_proc, minimum=1)
    shard_size = check_int("shard_size", shard_size, minimum=1)
    if isinstance(dataset, str):
        check_dataset_source(dataset)  # before the tokenizer loads
    if isinstance(tokenizer, (str, os.PathLike)):
        model, loaded_processor = load_visual_tokenizer(tokenizer)
        image_processor = image_processor or loaded_processor
    elif hasattr(tokenizer, "encode") and hasattr(tokenizer, "config"):
        model = tokenizer.eval()
        if image_processor is None:
            from ..mllm.processing_mllm import image_processor_for

            image_processor = image_processor_for(model.config)
    else:
        raise TypeError(f"`tokenizer` must be a tokenizer folder or a VisualTokenizerMixin model, got {describe(tokenizer)}.")
    source = dataset if isinstance(dataset, str) else None  # recorded: where the rows came from
    if isinstance(dataset, str):
        dataset = dataset_from_source(dataset, split=split, image_size=model.config.image_size)
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"`dataset` must be a datasets.Dataset (not streaming: shards need a length) or a source string, got {describe(dataset)}."
        )
    image_columns = list(image_columns) if image_columns is not None else _default_image_columns(dataset)
    if not image_columns:
        raise ValueError(f"`dataset` has no image column to tokenise; its columns are {dataset.column_names}.")
    for column in image_columns:
        if column not in dataset.column_names:
            raise ValueError(f"`image_columns` names {column!r}, which `dataset` lacks (columns {dataset.column_names}).")
    if keep_columns is None:
        keep_columns = [
            name for name in dataset.column_names
            if name not in image_columns and not isinstance(dataset.features.get(name), ImageFeature)
        ]
    unknown = [name for name in keep_columns if name not in dataset.column_names]
    if unknown:
        raise ValueError(f"`keep_columns` names {unknown}, which `dataset` lacks (columns {dataset.column_names}).")

    discrete = getattr(model.config, "codebook_size", None) is not None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_rows = len(dataset)
    num_shards = max(1, -(-num_rows // shard_size))
    manifest = {
        "format": FORMAT,
        "tokenizer_model_type": model.config.model_type,
        "tokenizer_name_or_path": str(getattr(model.config, "_name_or_path", "") or ""),
        "tokenizer_fingerprint": tokenizer_fingerprint(model),
        "source": source,
        "discrete": discrete,
        "codebook_size": getattr(model.config, "codebook_size", None),
        "num_visual_tokens": model.config.num_visual_tokens,
        "token_embedding_dim": model.config.token_embedding_dim,
        "token_order": getattr(model.config, "token_order", None),
        "image_columns": image_columns,
        "keep_columns": list(keep_columns),
        "num_rows": num_rows,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "complete": False,
    }
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.is_file() and not overwrite:
        previous = json.loads(manifest_path.read_text())
        keys = ("format", "tokenizer_fingerprint", "image_columns", "keep_columns", "num_rows", "shard_size")
        changed = [key for key in keys if previous.get(key) != manifest[key]]
        if changed:
            raise ValueError(
                f"`out_dir` {str(out_dir)!r} holds a pre-tokenisation run with other settings ({changed} differ); "
                "pass another folder or overwrite=True."
            )
    if overwrite:
        for stale in out_dir.glob("shard-*.parquet"):
            stale.unlink()
    manifest_path.write_text(json.dumps(manifest, indent=2))

    encoder = _BatchEncoder(model, image_processor, image_columns, batch_size)
    features = _output_features(dataset, image_columns, keep_columns, discrete)
    dropped = [name for name in dataset.column_names if name not in keep_columns]
    result = PretokenizeResult(out_dir=out_dir, num_rows=num_rows, num_shards=num_shards, columns=list(features))
    from tqdm.auto import tqdm

    bar = tqdm(total=num_shards, desc="Pre-tokenising shards", disable=not progress, unit="shard")
    for index in range(num_shards):
        path = shard_path(out_dir, index)
        if path.is_file():
            result.shards_skipped.append(index)
            bar.update(1)
            continue
        rows = dataset.select(range(index * shard_size, min(num_rows, (index + 1) * shard_size)))
        mapped = rows.map(
            encoder,
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc if num_proc > 1 and len(rows) > 1 else None,
            remove_columns=dropped,
            features=features,
            new_fingerprint=f"{manifest['tokenizer_fingerprint']}-shard{index}-of-{num_shards}",
            load_from_cache_file=False,
            desc=f"shard {index + 1}/{num_shards}",
        )
        temporary = path.with_name(path.name + ".tmp")
        mapped.to_parquet(str(temporary))
        os.replace(temporary, path)  # atomic: a shard file is either absent or complete
        result.shards_written.append(index)
        bar.update(1)
    bar.close()
    manifest["complete"] = True
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return result


def shard_path(out_dir: str | os.PathLike, index: int) -> Path:
    return Path(out_dir) / f"shard-{index:05d}.parquet"


def read_manifest(out_dir: str | os.PathLike) -> dict:
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"`path` {str(out_dir)!r} is not a pre-tokenised dataset (no {MANIFEST_NAME}).")
    return json.loads(path.read_text())


def load_pretokenized(out_dir: str | os.PathLike, *, require_complete: bool = True):
    """The shards of a :func:`pretokenize_dataset` run as one ``datasets.Dataset`` (its manifest in ``.info.description``)."""
    from datasets import Dataset, concatenate_datasets

    manifest = read_manifest(out_dir)
    if require_complete and not manifest.get("complete"):
        raise ValueError(
            f"`path` {str(out_dir)!r} holds an unfinished pre-tokenisation run: run it again with the same arguments "
            "to finish it (finished shards are skipped)."
        )
    files = [shard_path(out_dir, index) for index in range(manifest["num_shards"])]
    present = [path for path in files if path.is_file()]
    if not present:
        raise ValueError(f"`path` {str(out_dir)!r} holds no shard yet.")
    parts = [Dataset.from_parquet(str(path), cache_dir=str(Path(out_dir) / ".cache")) for path in present]
    dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    dataset.info.description = json.dumps(manifest)
    return dataset


# ``KIND:LOCATION`` sources; a string without a known kind is a Hub dataset name or a local dataset folder
SOURCE_KINDS = {
    "shapes": "shapes:N[:style[:seed]]",
    "imagefolder": "imagefolder:DIR",
    "arrow": "arrow:DIR",
    "parquet": "parquet:GLOB",
    "webdataset": "webdataset:GLOB",
}


def check_dataset_source(source: str) -> str:
    """Refuse a source string that cannot name a dataset before anything slow is loaded (``name`` of errors:
    ``dataset``): an unknown ``KIND:`` prefix, or a folder kind whose folder does not exist."""
    if not isinstance(source, str) or not source:
        raise TypeError(f"`dataset` must be a non-empty source string, got {describe(source)}.")
    kind, colon, location = source.partition(":")
    if colon and kind not in SOURCE_KINDS and "/" not in kind:  # "org/name:..." is no kind; Hub names have no ":"
        raise ValueError(f"`dataset` {source!r} has an unknown source kind {kind!r}; expected one of "
                         f"{', '.join(SOURCE_KINDS.values())}, or a Hub dataset name.")  # fmt: skip
    if kind in ("imagefolder", "arrow") and not Path(location).is_dir():
        raise ValueError(f"`dataset` {source!r}: {kind} needs an existing folder, got {location!r}.")
    return source


def load_image_dataset(source: str, *, split: str = "train", streaming: bool = False):
    """Any ``datasets`` source with an image column: ``imagefolder:DIR``, ``parquet:GLOB``,
    ``webdataset:GLOB``, ``arrow:DIR`` (``save_to_disk`` output) or a Hub dataset name.

    Webdataset shards name the image ``jpg``/``png`` and the caption ``txt``; they are renamed to
    ``image``/``caption`` so that every source gives the same columns.
    """
    import datasets

    kind, _, location = check_dataset_source(source).partition(":")
    if kind == "arrow":
        dataset = datasets.load_from_disk(location)
        return dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
    if kind == "imagefolder":
        dataset = datasets.load_dataset("imagefolder", data_dir=location, split=split, streaming=streaming)
    elif kind in ("parquet", "webdataset"):
        dataset = datasets.load_dataset(kind, data_files={split: location}, split=split, streaming=streaming)
    else:
        dataset = datasets.load_dataset(source, split=split, streaming=streaming)
    renames = {old: new for old, new in (("jpg", "image"), ("png", "image"), ("txt", "caption")) if old in (dataset.column_names or [])}
    for old, new in renames.items():
        if new not in dataset.column_names:
            dataset = dataset.rename_column(old, new)
    return dataset


def dataset_from_source(source: str, *, split: str = "train", image_size: int = 64):
    """``shapes:N[:style[:seed]]`` (the built-in shapes world with edits, rendered at ``image_size``: the tokenizer's
    resolution, so a 128 px tokenizer never sees upsampled 64 px scenes) or any :func:`load_image_dataset` source."""
    check_int("image_size", image_size, minimum=8)
    if check_dataset_source(source).startswith("shapes"):
        from .shapes import generate_shapes_dataset

        parts = source.split(":")
        try:
            count = int(parts[1]) if len(parts) > 1 and parts[1] else 1000
            style = parts[2] if len(parts) > 2 else "flat"
            seed = int(parts[3]) if len(parts) > 3 else 0
        except ValueError:
            raise ValueError(f"`dataset` must look like 'shapes:N[:style[:seed]]', got {source!r}.") from None
        return generate_shapes_dataset(count, image_size=image_size, style=style, seed=seed, progress=False)
    return load_image_dataset(source, split=split)


__all__ = [
    "MANIFEST_NAME",
    "SHIPPED_CHECKPOINTS_DIR",
    "PretokenizeResult",
    "SOURCE_KINDS",
    "check_dataset_source",
    "dataset_from_source",
    "load_image_dataset",
    "load_pretokenized",
    "load_visual_tokenizer",
    "pretokenize_dataset",
    "read_manifest",
    "resolve_tokenizer_source",
    "shard_path",
    "shipped_tokenizer_folders",
    "tokenizer_fingerprint",
    "tokenizer_subfolder",
]
