"""The built-in "shapes world": seeded multi-object scenes with masks, captions, questions and edits.

Every scene is a few coloured shapes (circle, square, triangle, diamond, star) of two sizes, drawn one
over the other on a background, with

* an occlusion-aware instance mask (0 = background, ``i`` = the ``i``-th listed object, topmost wins),
* the attributes of every visible object (shape, colour, size, centre, visible bounding box and area),
* a caption with spatial relations ("A large red circle left of a small blue square."),
* question/answer pairs (count, colour, shape, size, existence, position),
* one edit pair (recolor, remove, add or move) whose target is re-rendered from the edited object
  list, so everything the instruction does not mention stays pixel-identical.

Two styles share the same layouts (the layout drawn for a seed does not depend on the style):

* ``"flat"``: flat palette colours on a plain dark background. A per-image colour k-means separates the
  objects almost perfectly, which makes it the easy sanity-check setting.
* ``"textured"`` (default): objects filled with a shaded, textured version of their named colour on a
  tinted texture background (the CC0 brick/grass/gravel photographs of ``skimage.data`` plus value
  noise). Colour clustering no longer finds the objects, so a tokenizer has to group pixels into
  objects the way the slot/cluster papers intend.

Within a scene every object has its own colour, so "the red circle" and "the red object" always name
exactly one object. Scene ``i`` of a dataset depends only on ``(seed, i)``.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from ..utils.validation import check_choice, check_float, check_int, describe, load_image

__all__ = [
    "COLORS",
    "EDIT_TYPES",
    "FLAT_BACKGROUND",
    "OPPOSITE_RELATION",
    "QUESTION_TYPES",
    "SHAPES",
    "SIZES",
    "STYLES",
    "AttributeReport",
    "DetectedObject",
    "ObjectSpec",
    "Scene",
    "SceneEdit",
    "ShapesWorldConfig",
    "check_attributes",
    "detect_objects",
    "generate_scene",
    "generate_shapes_dataset",
    "render_scene",
    "spatial_relation",
    "write_shapes_dataset",
]

# Named palette, chosen so that every pair is far apart in RGB (nearest pair: red/orange, ~100 apart)
# and far from the flat background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 180, 60),
    "cyan": (40, 210, 220),
    "blue": (40, 80, 230),
    "purple": (150, 60, 200),
    "white": (235, 235, 235),
}
FLAT_BACKGROUND: tuple[int, int, int] = (32, 32, 32)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
# Object radius as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.09, "large": 0.14}
STYLES: tuple[str, ...] = ("textured", "flat")
EDIT_TYPES: tuple[str, ...] = ("recolor", "remove", "add", "move")
# The `type` of every generated question (a position question needs two objects; a colour question a unique shape).
QUESTION_TYPES: tuple[str, ...] = ("count", "color", "shape", "size", "exist", "position")

# An object covered down to less than this share of its own area is dropped from the scene (it could
# not be named or segmented reliably), as is one with fewer visible pixels than MIN_VISIBLE_PIXELS.
MIN_VISIBLE_FRACTION = 0.25
MIN_VISIBLE_PIXELS = 4
# Centres closer than this multiple of the summed radii are re-drawn: partial occlusion happens, piles do not.
MIN_SEPARATION = 0.7
_PLACEMENT_ATTEMPTS = 30
_LAYOUT_ATTEMPTS = 100
_EDIT_ATTEMPTS = 20


# --------------------------------------------------------------------------------------------------
# Geometry: every shape is defined in "unit" coordinates (radius 1, y pointing down) and rasterised by
# testing pixel centres, without anti-aliasing, so that the mask and a flat rendering agree exactly.
# --------------------------------------------------------------------------------------------------


def _regular_star(points: int, outer: float, inner: float) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


# Polygon outlines (x, y) in unit coordinates, sized so that all kinds cover a similar area; None = circle.
_OUTLINES: dict[str, np.ndarray | None] = {
    "circle": None,
    "square": np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]]),
    "triangle": np.array(
        [[0.0, -1.35], [1.35 * math.cos(math.pi / 6), 0.675], [-1.35 * math.cos(math.pi / 6), 0.675]]
    ),
    "diamond": np.array([[0.0, -1.25], [0.95, 0.0], [0.0, 1.25], [-0.95, 0.0]]),
    "star": _regular_star(5, outer=1.35, inner=0.55),
}
# (min_x, max_x, min_y, max_y) of each outline, used for placement margins and template fitting.
_BOUNDS: dict[str, tuple[float, float, float, float]] = {
    name: (-1.0, 1.0, -1.0, 1.0)
    if outline is None
    else (outline[:, 0].min(), outline[:, 0].max(), outline[:, 1].min(), outline[:, 1].max())
    for name, outline in _OUTLINES.items()
}
_EXTENT: dict[str, float] = {name: float(np.abs(bounds).max()) for name, bounds in _BOUNDS.items()}


def _polygon_edges(outline: np.ndarray) -> tuple[tuple[float, float, float, float], ...]:
    """Non-horizontal edges as ``(x0, y0, y1, dx/dy)``: a horizontal ray never crosses a horizontal edge."""
    edges = []
    for (x0, y0), (x1, y1) in zip(outline, np.roll(outline, -1, axis=0)):
        if y1 != y0:
            edges.append((float(x0), float(y0), float(y1), float((x1 - x0) / (y1 - y0))))
    return tuple(edges)


_EDGES = {name: _polygon_edges(outline) for name, outline in _OUTLINES.items() if outline is not None}


def _inside_unit_shape(shape: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Which unit-coordinate points lie inside ``shape``; ``px``/``py`` broadcast (e.g. a row and a column).

    Polygons use the crossing-number test, which also handles the non-convex star.
    """
    if shape == "circle":
        return px**2 + py**2 <= 1.0
    inside = np.zeros(np.broadcast_shapes(px.shape, py.shape), dtype=bool)
    for x0, y0, y1, slope in _EDGES[shape]:
        crosses = (y0 > py) != (y1 > py)
        inside ^= crosses & (px < x0 + (py - y0) * slope)
    return inside


def _shape_mask(shape: str, x: float, y: float, radius: float, image_size: int) -> np.ndarray:
    """Boolean ``image_size x image_size`` mask of one shape centred at ``(x, y)`` (fractions of the side)."""
    mask = np.zeros((image_size, image_size), dtype=bool)
    extent = _EXTENT[shape] * radius
    x_lo, y_lo = (max(0, math.floor((c - extent) * image_size)) for c in (x, y))
    x_hi, y_hi = (min(image_size, math.ceil((c + extent) * image_size)) for c in (x, y))
    if x_lo >= x_hi or y_lo >= y_hi:
        return mask
    px = ((np.arange(x_lo, x_hi) + 0.5) / image_size - x) / radius
    py = ((np.arange(y_lo, y_hi) + 0.5) / image_size - y) / radius
    mask[y_lo:y_hi, x_lo:x_hi] = _inside_unit_shape(shape, px[None, :], py[:, None])
    return mask


# --------------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """What is needed to draw one object: its attributes, its centre and the seed of its texture.

    ``x``/``y`` are the shape's centre as fractions of the image side (``x`` to the right, ``y`` down).
    ``texture_seed`` fixes the texture and shading of the object in the textured style, so that an
    edited scene re-renders every untouched object identically.
    """

    shape: str
    color: str
    size: str
    x: float
    y: float
    texture_seed: int = 0

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def extent(self) -> float:
        """Largest distance from the centre to the outline, as a fraction of the image side."""
        return _EXTENT[self.shape] * self.radius

    @property
    def name(self) -> str:
        """Referring expression, unique within a scene because colours are: "red circle"."""
        return f"{self.color} {self.shape}"

    @property
    def description(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass
class SceneEdit:
    """An edit instruction and the re-rendered scene it produces."""

    edit_type: str
    instruction: str
    target: Scene


@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        image: the RGB picture.
        mask: ``int32`` array ``[H, W]``; 0 is background and ``objects[i]`` owns the pixels equal to
            ``i + 1`` (its ``id``). Where objects overlap, the pixel belongs to the one drawn last.
        objects: one dict per visible object, in drawing order (bottom to top): ``id``, ``shape``,
            ``color``, ``size``, ``x``/``y`` (shape centre in [0, 1]), ``bbox`` (visible pixels,
            ``[x0, y0, x1, y1]`` with exclusive ends, like ``PIL.Image.crop``) and ``area`` (visible pixels).
        caption: one sentence per pair of consecutive objects, naming the spatial relation.
        questions: ``{"question", "answer", "type"}`` dicts (filled by :func:`generate_scene`).
        edit: the scene's edit pair, when one was drawn.
        style, background_seed, specs: what :func:`render_scene` needs to draw the scene again.
    """

    image: Image.Image
    mask: np.ndarray
    objects: list[dict[str, Any]]
    caption: str
    style: str
    background_seed: int
    specs: tuple[ObjectSpec, ...]
    questions: list[dict[str, str]] = field(default_factory=list)
    edit: SceneEdit | None = None

    @property
    def mask_image(self) -> Image.Image:
        """The mask as an 8-bit ``"L"`` image (ids are small, see ``ShapesWorldConfig.max_objects``)."""
        return Image.fromarray(self.mask.astype(np.uint8))


def _check_names(name: str, value: Any, known: Sequence[str]) -> tuple[str, ...]:
    """A non-empty sequence of distinct names taken from ``known``."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be a list of names from {list(known)}, got {describe(value)}.")
    if len(value) == 0:
        raise ValueError(f"`{name}` must name at least one of {list(known)}, got an empty list.")
    for item in value:
        check_choice(name, item, known)
    if len(set(value)) != len(value):
        raise ValueError(f"`{name}` must not repeat names, got {list(value)}.")
    return tuple(value)


@dataclass
class ShapesWorldConfig:
    """Everything that defines a shapes-world dataset; validated on creation.

    Args:
        num_images: number of scenes.
        image_size: side of the square images in pixels.
        min_objects, max_objects: inclusive range of the number of visible objects per scene. Objects
            of one scene have distinct colours, so ``max_objects <= len(colors)``.
        style: ``"textured"`` (default) or ``"flat"``; see the module docstring.
        seed: scene ``i`` is drawn from ``np.random.default_rng([seed, i])``.
        shapes, colors: the shape kinds and palette colours to draw from (defaults: all of them).
    """

    num_images: int = 1000
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    style: str = "textured"
    seed: int = 0
    shapes: Sequence[str] = SHAPES
    colors: Sequence[str] = tuple(COLORS)

    def __post_init__(self):
        self.num_images = check_int("num_images", self.num_images, minimum=1)
        # Below 16 pixels a small shape is a handful of pixels and its kind can no longer be seen.
        self.image_size = check_int("image_size", self.image_size, minimum=16, maximum=4096)
        self.min_objects = check_int("min_objects", self.min_objects, minimum=1)
        self.max_objects = check_int("max_objects", self.max_objects, minimum=1)
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"`min_objects` must be <= `max_objects`, got min_objects={self.min_objects} > "
                f"max_objects={self.max_objects}."
            )
        self.style = check_choice("style", self.style, STYLES)
        self.seed = check_int("seed", self.seed, minimum=0)
        self.shapes = _check_names("shapes", self.shapes, SHAPES)
        self.colors = _check_names("colors", self.colors, tuple(COLORS))
        if self.max_objects > len(self.colors):
            raise ValueError(
                f"`max_objects` must be <= the number of `colors` ({len(self.colors)}), because the objects "
                f"of a scene have distinct colours; got max_objects={self.max_objects}."
            )


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


# Downscaling factors of the texture pyramid: a patch is a crop of one level, so a texture appears at a
# few scales without resampling at render time.
_TEXTURE_SCALES = (1.0, 1.5, 2.0, 3.0)


@functools.lru_cache(maxsize=1)
def _texture_bank() -> tuple[tuple[np.ndarray, ...], ...]:
    """Texture pyramids: the CC0 grey-scale photographs shipped with scikit-image (brick, grass, gravel)
    and a smooth value-noise field, each standardised to zero mean and unit variance."""
    from skimage import data

    sources = [loader().astype(np.float32) for loader in (data.brick, data.grass, data.gravel)]
    side = sources[0].shape[0]
    # Fixed seed: the noise field is part of the dataset definition, like the photographs.
    sources.append(_resize_float(np.random.default_rng(0).standard_normal((side // 24, side // 24)), side))
    bank = []
    for source in sources:
        levels = []
        for scale in _TEXTURE_SCALES:
            level = _resize_float(source, round(side / scale))
            level = (level - level.mean()) / level.std()
            level.setflags(write=False)
            levels.append(level)
        bank.append(tuple(levels))
    return tuple(bank)


def _resize_float(array: np.ndarray, size: int) -> np.ndarray:
    resample = Image.Resampling.BICUBIC if array.shape[0] < size else Image.Resampling.BOX
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize((size, size), resample))


def _texture_patch(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``size x size`` patch with zero mean and unit variance: a random crop of a random texture at a
    random scale, in one of four orientations."""
    bank = _texture_bank()
    pyramid = bank[rng.integers(len(bank))]
    levels = [level for level in pyramid if level.shape[0] >= size]
    if levels:
        level = levels[rng.integers(len(levels))]
        top, left = rng.integers(0, level.shape[0] - size + 1, size=2)
        patch = level[top : top + size, left : left + size]
    else:  # images larger than the photographs: stretch the whole texture
        patch = _resize_float(pyramid[0], size)
    turn = int(rng.integers(4))  # quarter turns, by slicing (np.rot90 costs more than the rest here)
    patch = (patch, patch.T[::-1], patch[::-1, ::-1], patch.T[:, ::-1])[turn]
    return (patch - patch.mean()) / (patch.std() + 1e-6)


# Cached because an edit re-renders its source scene's background and untouched objects; the cached
# arrays are read-only.
@functools.lru_cache(maxsize=16)
def _textured_background(background_seed: int, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float RGB background, the scene's light direction (a unit-coordinate offset of the highlights)
    and the faint sensor noise added over the whole finished picture."""
    rng = np.random.default_rng(background_seed)
    light = rng.uniform(-0.6, 0.6, size=2)
    texture = _texture_patch(rng, image_size)
    # Any tint, saturated ones included: the background may share its hue with an object.
    tint = rng.uniform(0.15, 0.85, size=3)
    contrast = rng.uniform(0.25, 0.5)
    coords = (np.arange(image_size) + 0.5) / image_size - 0.5
    # Brighter towards the light, like the objects' shading.
    gradient = 1.0 + 0.5 * (light[0] * coords[None, :] + light[1] * coords[:, None])
    background = tint * ((1.0 + contrast * texture) * gradient)[..., None]
    noise = rng.normal(0.0, 0.015, size=background.shape)
    for array in (background, light, noise):
        array.setflags(write=False)
    return background, light, noise


@functools.lru_cache(maxsize=256)
def _object_texture(texture_seed: int, patch_size: int) -> tuple[np.ndarray, float, np.ndarray]:
    """An object's texture patch, texture contrast and colour jitter: everything but its colour."""
    rng = np.random.default_rng(texture_seed)
    texture = _texture_patch(rng, patch_size)
    contrast = float(rng.uniform(0.15, 0.35))
    jitter = 1.0 + rng.normal(0.0, 0.04, size=3)
    texture.setflags(write=False)
    jitter.setflags(write=False)
    return texture, contrast, jitter


def _textured_object(
    spec: ObjectSpec, pixels_yx: tuple[np.ndarray, np.ndarray], image_size: int, light: np.ndarray
):
    """RGB floats of ``spec`` at the given pixels: its colour, shaded towards the light and textured.

    The texture is anchored to the object (not the image), so a moved object keeps its look.
    """
    patch_size = math.ceil(2 * spec.extent * image_size) + 2
    texture, contrast, jitter = _object_texture(spec.texture_seed, patch_size)
    base = np.asarray(COLORS[spec.color], dtype=np.float64) / 255.0 * jitter

    rows, cols = pixels_yx
    u = ((cols + 0.5) / image_size - spec.x) / spec.radius
    v = ((rows + 0.5) / image_size - spec.y) / spec.radius
    distance = np.hypot(u - 0.5 * light[0], v - 0.5 * light[1]) / _EXTENT[spec.shape]
    shade = np.clip(1.15 - 0.8 * distance, 0.3, 1.2)
    highlight = 0.3 * np.exp(-((distance / 0.3) ** 2))
    half = patch_size / 2
    tex_rows = np.clip((rows + 0.5 - spec.y * image_size + half).astype(int), 0, patch_size - 1)
    tex_cols = np.clip((cols + 0.5 - spec.x * image_size + half).astype(int), 0, patch_size - 1)
    grain = 1.0 + contrast * texture[tex_rows, tex_cols]
    return base * (shade * grain)[:, None] + highlight[:, None]


def _rasterize(specs: Sequence[ObjectSpec], image_size: int) -> tuple[np.ndarray, list[int]]:
    """Label map of ``specs`` drawn in order, and the indices of the objects visible enough to keep."""
    label = np.zeros((image_size, image_size), dtype=np.int32)
    full_areas = []
    for index, spec in enumerate(specs, start=1):
        shape_mask = _shape_mask(spec.shape, spec.x, spec.y, spec.radius, image_size)
        label[shape_mask] = index
        full_areas.append(int(shape_mask.sum()))
    visible = np.bincount(label.ravel(), minlength=len(specs) + 1)[1:]
    # Removing a hidden object can only uncover the others, so one filtering pass is enough.
    kept = [
        i
        for i, (area, full) in enumerate(zip(visible, full_areas))
        if area >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * full)
    ]
    return label, kept


def _as_spec(value: Any, name: str) -> ObjectSpec:
    if isinstance(value, ObjectSpec):
        spec = value
    elif isinstance(value, Mapping):
        missing = [key for key in ("shape", "color", "size", "x", "y") if key not in value]
        if missing:
            raise ValueError(f"`{name}` is missing the keys {missing}, got {describe(dict(value))}.")
        spec = ObjectSpec(
            shape=value["shape"],
            color=value["color"],
            size=value["size"],
            x=value["x"],
            y=value["y"],
            texture_seed=value.get("texture_seed", 0),
        )
    else:
        raise TypeError(
            f"`{name}` must be an ObjectSpec or a dict of object attributes, got {describe(value)}."
        )
    check_choice(f"{name}.shape", spec.shape, SHAPES)
    check_choice(f"{name}.color", spec.color, tuple(COLORS))
    check_choice(f"{name}.size", spec.size, tuple(SIZES))
    check_float(f"{name}.x", spec.x, minimum=0.0, maximum=1.0)
    check_float(f"{name}.y", spec.y, minimum=0.0, maximum=1.0)
    check_int(f"{name}.texture_seed", spec.texture_seed, minimum=0)
    return spec


def render_scene(
    objects: Sequence[ObjectSpec | Mapping[str, Any]],
    *,
    image_size: int = 64,
    style: str = "textured",
    background_seed: int = 0,
) -> Scene:
    """Draw a list of objects (bottom to top) into a :class:`Scene` with mask, attributes and caption.

    Objects hidden by those drawn after them (see ``MIN_VISIBLE_FRACTION``) are left out of the scene
    entirely, so the image, the mask and the object list always agree. ``objects`` may be empty.
    ``questions`` stays empty: :func:`generate_scene` draws them.

    Args:
        objects: :class:`ObjectSpec` instances, or dicts with ``shape``, ``color``, ``size``, ``x``, ``y``
            (and optionally ``texture_seed``), such as the ``objects`` column of the dataset. Dataset rows
            re-render exactly in the flat style; the textured style also needs the scene's ``specs``
            (texture seeds) and ``background_seed``.
        image_size: side of the square image in pixels (>= 16).
        style: ``"textured"`` or ``"flat"``.
        background_seed: fixes the background texture, tint and light of the textured style.
    """
    image_size = check_int("image_size", image_size, minimum=16, maximum=4096)
    style = check_choice("style", style, STYLES)
    background_seed = check_int("background_seed", background_seed, minimum=0)
    if isinstance(objects, (str, Mapping)) or not isinstance(objects, Sequence):
        raise TypeError(f"`objects` must be a list of ObjectSpec or dicts, got {describe(objects)}.")
    specs = [_as_spec(value, f"objects[{i}]") for i, value in enumerate(objects)]

    label, kept = _rasterize(specs, image_size)
    if len(kept) < len(specs):
        specs = [specs[i] for i in kept]
        label, _ = _rasterize(specs, image_size)

    if style == "flat":
        palette = np.array([FLAT_BACKGROUND] + [COLORS[spec.color] for spec in specs], dtype=np.uint8)
        pixels = palette[label]
    else:
        background, light, noise = _textured_background(background_seed, image_size)
        canvas = background.copy()
        for index, spec in enumerate(specs, start=1):
            where = np.nonzero(label == index)
            canvas[where] = _textured_object(spec, where, image_size, light)
        canvas += noise
        pixels = np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)

    objects_info = []
    areas = np.bincount(label.ravel(), minlength=len(specs) + 1)
    for index, (spec, box) in enumerate(
        zip(specs, ndimage.find_objects(label, max_label=len(specs))), start=1
    ):
        objects_info.append(
            {
                "id": index,
                "shape": spec.shape,
                "color": spec.color,
                "size": spec.size,
                "x": float(spec.x),
                "y": float(spec.y),
                "bbox": [box[1].start, box[0].start, box[1].stop, box[0].stop],
                "area": int(areas[index]),
            }
        )
    return Scene(
        image=Image.fromarray(pixels),
        mask=label,
        objects=objects_info,
        caption=_caption(specs),
        style=style,
        background_seed=background_seed,
        specs=tuple(specs),
    )


# --------------------------------------------------------------------------------------------------
# Language: captions, questions, edit instructions
# --------------------------------------------------------------------------------------------------


def spatial_relation(a: ObjectSpec, b: ObjectSpec) -> str:
    """Where ``a`` is with respect to ``b`` (one of ``OPPOSITE_RELATION``'s keys), along the axis on which they are
    furthest apart: the relation every caption, position question and edit instruction of the shapes world states."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


# each relation and the one that states the same pair the other way round (a position question's wrong answer)
OPPOSITE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _indefinite(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _region(spec: ObjectSpec) -> str:
    horizontal = "left" if spec.x < 1 / 3 else "right" if spec.x > 2 / 3 else ""
    vertical = "top" if spec.y < 1 / 3 else "bottom" if spec.y > 2 / 3 else ""
    if horizontal and vertical:
        return f"in the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return "in the centre"


def _caption(specs: Sequence[ObjectSpec]) -> str:
    """Deterministic caption: each object named once, chained by the relation of consecutive objects."""
    if not specs:
        return "An empty scene."
    if len(specs) == 1:
        return f"A {specs[0].description} {_region(specs[0])}."
    sentences = [f"A {specs[0].description} {spatial_relation(specs[0], specs[1])} a {specs[1].description}."]
    for previous, current in itertools.pairwise(specs[1:]):
        sentences.append(f"The {previous.name} is {spatial_relation(previous, current)} a {current.description}.")
    return " ".join(sentences)


def _questions(
    rng: np.random.Generator, specs: Sequence[ObjectSpec], config: ShapesWorldConfig
) -> list[dict]:
    """One question of each applicable type, answers read off the object list."""
    questions = [{"question": "How many objects are there?", "answer": str(len(specs)), "type": "count"}]

    shape_counts = {shape: sum(spec.shape == shape for spec in specs) for shape in SHAPES}
    unique_shapes = [spec for spec in specs if shape_counts[spec.shape] == 1]
    if unique_shapes:  # "the circle" must name one object
        target = unique_shapes[rng.integers(len(unique_shapes))]
        questions.append(
            {"question": f"What colour is the {target.shape}?", "answer": target.color, "type": "color"}
        )

    target = specs[rng.integers(len(specs))]
    questions.append(
        {"question": f"What shape is the {target.color} object?", "answer": target.shape, "type": "shape"}
    )
    target = specs[rng.integers(len(specs))]
    questions.append({"question": f"What size is the {target.name}?", "answer": target.size, "type": "size"})

    # Half the existence questions are about a colour/shape pair that is absent.
    present = {(spec.color, spec.shape) for spec in specs}
    if rng.random() < 0.5:
        color, shape = sorted(present)[rng.integers(len(present))]
    else:
        absent = [(c, s) for c in config.colors for s in config.shapes if (c, s) not in present]
        color, shape = absent[rng.integers(len(absent))] if absent else min(present)
    answer = "yes" if (color, shape) in present else "no"
    questions.append(
        {"question": f"Is there {_indefinite(f'{color} {shape}')}?", "answer": answer, "type": "exist"}
    )

    if len(specs) >= 2:
        # Ask along the pair's dominant axis, where the answer is visually unambiguous; half true, half false.
        first, second = rng.choice(len(specs), size=2, replace=False)
        a, b = specs[first], specs[second]
        relation = spatial_relation(a, b)
        asked = relation if rng.random() < 0.5 else OPPOSITE_RELATION[relation]
        questions.append(
            {
                "question": f"Is the {a.name} {asked} the {b.name}?",
                "answer": "yes" if asked == relation else "no",
                "type": "position",
            }
        )
    return questions


# --------------------------------------------------------------------------------------------------
# Sampling scenes and edits
# --------------------------------------------------------------------------------------------------


def _sample_object(
    rng: np.random.Generator, config: ShapesWorldConfig, color: str, placed: Sequence[ObjectSpec]
) -> ObjectSpec | None:
    """A new object of the given colour, fully inside the image and not piled onto ``placed``."""
    shape = str(rng.choice(config.shapes))
    size = str(rng.choice(tuple(SIZES)))
    texture_seed = int(rng.integers(2**31))
    margin = _EXTENT[shape] * SIZES[size]
    for _ in range(_PLACEMENT_ATTEMPTS):
        x, y = rng.uniform(margin, 1.0 - margin, size=2)
        if all(math.hypot(x - o.x, y - o.y) >= MIN_SEPARATION * (SIZES[size] + o.radius) for o in placed):
            return ObjectSpec(shape, color, size, float(x), float(y), texture_seed)
    return None


def _sample_specs(rng: np.random.Generator, config: ShapesWorldConfig) -> list[ObjectSpec]:
    for _ in range(_LAYOUT_ATTEMPTS):
        count = int(rng.integers(config.min_objects, config.max_objects + 1))
        specs: list[ObjectSpec] = []
        for color in rng.choice(config.colors, size=count, replace=False):
            spec = _sample_object(rng, config, str(color), specs)
            if spec is not None:
                specs.append(spec)
        _, kept = _rasterize(specs, config.image_size)
        if len(kept) >= config.min_objects:
            return [specs[i] for i in kept]
    raise RuntimeError(
        f"Could not place {config.min_objects} visible objects in a {config.image_size}px image after "
        f"{_LAYOUT_ATTEMPTS} attempts; lower `min_objects`."
    )


def _propose_edit(
    rng: np.random.Generator,
    edit_type: str,
    specs: list[ObjectSpec],
    unused_colors: list[str],
    config: ShapesWorldConfig,
) -> tuple[str, list[ObjectSpec]] | None:
    """Instruction and edited object list, or None when this draw does not fit in the image."""
    index = int(rng.integers(len(specs)))
    chosen = specs[index]
    if edit_type == "recolor":
        color = unused_colors[rng.integers(len(unused_colors))]
        edited = specs.copy()
        edited[index] = replace(chosen, color=color)
        return f"make the {chosen.name} {color}", edited
    if edit_type == "remove":
        return f"remove the {chosen.name}", specs[:index] + specs[index + 1 :]
    if edit_type == "add":
        color = unused_colors[rng.integers(len(unused_colors))]
        new = _sample_object(rng, config, color, specs)
        if new is None:
            return None
        return f"add a {new.description} {spatial_relation(new, chosen)} the {chosen.name}", specs + [new]
    # move: one step along one axis, staying inside the image.
    distance = rng.uniform(0.2, 0.35)
    margin = chosen.extent
    moves = {
        "to the left": (chosen.x - distance, chosen.y),
        "to the right": (chosen.x + distance, chosen.y),
        "up": (chosen.x, chosen.y - distance),
        "down": (chosen.x, chosen.y + distance),
    }
    fitting = [
        name for name, (x, y) in moves.items() if margin <= x <= 1 - margin and margin <= y <= 1 - margin
    ]
    if not fitting:
        return None
    direction = fitting[rng.integers(len(fitting))]
    x, y = moves[direction]
    edited = specs.copy()
    edited[index] = replace(chosen, x=float(x), y=float(y))
    return f"move the {chosen.name} {direction}", edited


def _sample_edit(rng: np.random.Generator, scene: Scene, config: ShapesWorldConfig) -> SceneEdit | None:
    specs = list(scene.specs)
    used = {spec.color for spec in specs}
    unused_colors = [color for color in config.colors if color not in used]
    feasible = ["move"]
    if unused_colors:
        feasible.append("recolor")
        if len(specs) < config.max_objects:
            feasible.append("add")
    if len(specs) >= 2:
        feasible.append("remove")
    for edit_type in rng.permutation(sorted(feasible)):
        for _ in range(_EDIT_ATTEMPTS):
            proposal = _propose_edit(rng, str(edit_type), specs, unused_colors, config)
            if proposal is None:
                continue
            instruction, edited = proposal
            # The edit must not hide any object, or the target would silently lose one.
            if len(_rasterize(edited, config.image_size)[1]) == len(edited):
                target = render_scene(
                    edited,
                    image_size=config.image_size,
                    style=config.style,
                    background_seed=scene.background_seed,
                )
                return SceneEdit(edit_type=str(edit_type), instruction=instruction, target=target)
    return None


def _as_generator(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(check_int("seed", seed, minimum=0))


def _generate_scene(rng: np.random.Generator, config: ShapesWorldConfig, with_edit: bool) -> Scene:
    specs = _sample_specs(rng, config)
    background_seed = int(rng.integers(2**31))
    scene = render_scene(
        specs, image_size=config.image_size, style=config.style, background_seed=background_seed
    )
    scene.questions = _questions(rng, scene.specs, config)
    if with_edit:
        scene.edit = _sample_edit(rng, scene, config)
    return scene


def generate_scene(seed: int | np.random.Generator, *, with_edit: bool = True, **scene_options) -> Scene:
    """Draw one random scene with its questions and (when ``with_edit``) an edit pair.

    Args:
        seed: a non-negative int or a ``np.random.Generator`` (consumed). The layout drawn for a seed is
            the same in both styles.
        with_edit: also draw an edit (``scene.edit``; None in the rare case where no edit fits).
        **scene_options: ``image_size``, ``min_objects``, ``max_objects``, ``style``, ``shapes``,
            ``colors``; see :class:`ShapesWorldConfig`.
    """
    rng = _as_generator(seed)
    config = ShapesWorldConfig(num_images=1, **scene_options)
    return _generate_scene(rng, config, with_edit=bool(with_edit))


def _iter_scenes(
    config: ShapesWorldConfig, with_edits: bool, progress: bool, description: str
) -> Iterator[Scene]:
    from tqdm.auto import tqdm

    for index in tqdm(range(config.num_images), desc=description, disable=not progress):
        # Seeding with (seed, index) makes scene i independent of num_images and of the other scenes.
        yield _generate_scene(np.random.default_rng([config.seed, index]), config, with_edits)


# --------------------------------------------------------------------------------------------------
# Datasets: in memory (datasets.Dataset) and on disk (image folder)
# --------------------------------------------------------------------------------------------------


def _features():
    from datasets import Features, Value
    from datasets import Image as ImageFeature

    object_feature = [
        {
            "id": Value("int32"),
            "shape": Value("string"),
            "color": Value("string"),
            "size": Value("string"),
            "x": Value("float64"),
            "y": Value("float64"),
            "bbox": [Value("int32")],
            "area": Value("int32"),
        }
    ]
    question_feature = [{"question": Value("string"), "answer": Value("string"), "type": Value("string")}]
    return Features(
        {
            "image": ImageFeature(),
            "mask": ImageFeature(),
            "objects": object_feature,
            "caption": Value("string"),
            "questions": question_feature,
            "edit_type": Value("string"),
            "edit_instruction": Value("string"),
            "edit_image": ImageFeature(),
            "edit_mask": ImageFeature(),
            "edit_objects": object_feature,
            "edit_caption": Value("string"),
        }
    )


def _row(scene: Scene, with_edits: bool) -> dict[str, Any]:
    """One dataset row; ``datasets`` encodes the PIL images as PNG itself."""
    row = {
        "image": scene.image,
        "mask": scene.mask_image,
        "objects": scene.objects,
        "caption": scene.caption,
        "questions": scene.questions,
    }
    if with_edits and scene.edit is None:
        row.update(dict.fromkeys(["edit_type", "edit_instruction", "edit_image", "edit_mask", "edit_caption"]))
        row["edit_objects"] = []
    elif with_edits:
        target = scene.edit.target
        row.update(
            edit_type=scene.edit.edit_type,
            edit_instruction=scene.edit.instruction,
            edit_image=target.image,
            edit_mask=target.mask_image,
            edit_objects=target.objects,
            edit_caption=target.caption,
        )
    return row


def generate_shapes_dataset(
    num_images: int = 1000, *, with_edits: bool = True, progress: bool = True, **scene_options
):
    """Generate the shapes world as an in-memory ``datasets.Dataset``.

    Columns: ``image`` and ``mask`` (``datasets.Image``; the mask is an 8-bit ``"L"`` PNG whose pixel
    values are object ids), ``objects`` (list of attribute dicts, see :class:`Scene`), ``caption``,
    ``questions`` (list of ``{"question", "answer", "type"}``) and, with ``with_edits``, ``edit_type``,
    ``edit_instruction``, ``edit_image``, ``edit_mask``, ``edit_objects`` and ``edit_caption``.

    ``scene_options`` are the other fields of :class:`ShapesWorldConfig` (``image_size``, ``style``,
    ``seed``, ...). The same arguments give byte-identical images; row ``i`` depends only on
    ``(seed, i)``. Images are held as PNG bytes in memory (about 10 kB per 64 px textured scene with its
    edit); for large sets, write them to disk with :func:`write_shapes_dataset`.
    """
    from datasets import Dataset

    config = ShapesWorldConfig(num_images, **scene_options)
    features = _features()
    if not with_edits:
        features = features.copy()
        for name in list(features):
            if name.startswith("edit_"):
                del features[name]
    scenes = _iter_scenes(config, bool(with_edits), progress, "Generating shapes scenes")
    return Dataset.from_list([_row(scene, with_edits) for scene in scenes], features=features)


# Image columns and the folders (and metadata keys) they are written to.
_IMAGE_FOLDERS = {
    "image": ("images", "file_name"),
    "mask": ("masks", "mask_file_name"),
    "edit_image": ("edit_images", "edit_image_file_name"),
    "edit_mask": ("edit_masks", "edit_mask_file_name"),
}


def write_shapes_dataset(
    out_dir: str | os.PathLike,
    num_images: int = 1000,
    *,
    with_edits: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    **scene_options,
) -> Path:
    """Write the shapes world as an image folder that ``datasets`` reads back.

    Layout: ``images/00000.png``, ``masks/00000.png`` (8-bit object ids), ``edit_images/``,
    ``edit_masks/`` and ``metadata.jsonl`` with one line per scene (``file_name``, ``mask_file_name``,
    ``edit_image_file_name``, ``edit_mask_file_name``, ``caption``, ``objects``, ``questions`` and the
    edit fields). ``load_dataset("imagefolder", data_dir=out_dir)`` turns every ``*file_name`` key into
    an image column, so it gives the same columns as :func:`generate_shapes_dataset`.

    Args:
        out_dir: folder to create. A non-empty folder is refused unless ``overwrite``, which removes
            only the paths this function writes.
        Other arguments: as :func:`generate_shapes_dataset`.

    Returns:
        The folder, as a ``Path``.
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"`out_dir` must be a path, got {describe(out_dir)}.")
    config = ShapesWorldConfig(num_images, **scene_options)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"`out_dir` must be a folder, got the file {str(out_dir)!r}.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(
                f"`out_dir` {str(out_dir)!r} is not empty; pass overwrite=True to replace its dataset."
            )
        for folder, _ in _IMAGE_FOLDERS.values():
            shutil.rmtree(out_dir / folder, ignore_errors=True)
        (out_dir / "metadata.jsonl").unlink(missing_ok=True)
    width = max(5, len(str(config.num_images - 1)))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        scenes = _iter_scenes(config, bool(with_edits), progress, f"Writing shapes scenes to {out_dir}")
        for index, scene in enumerate(scenes):
            row = _row(scene, with_edits)
            record: dict[str, Any] = {}
            for column, (folder, key) in _IMAGE_FOLDERS.items():
                if column not in row:
                    continue
                image = row.pop(column)
                record[key] = None if image is None else f"{folder}/{index:0{width}d}.png"
                if image is not None:
                    (out_dir / folder).mkdir(parents=True, exist_ok=True)
                    image.save(out_dir / record[key])
            metadata.write(json.dumps(record | row) + "\n")
    return out_dir


# --------------------------------------------------------------------------------------------------
# Attribute checking for generated (flat-colour) images
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectedObject:
    """A coloured blob found by :func:`detect_objects`.

    ``x``/``y`` are the blob's centroid as fractions of the image side, ``bbox`` is ``[x0, y0, x1, y1]``
    with exclusive ends, and ``shape_score`` the IoU between the blob and the best-fitting outline.
    """

    color: str
    shape: str
    x: float
    y: float
    area: int
    bbox: tuple[int, int, int, int]
    shape_score: float


def _classify_shape(blob: np.ndarray, shapes: Sequence[str]) -> tuple[str, float]:
    """The shape kind whose outline, stretched to the blob's bounding box, overlaps the blob best."""
    height, width = blob.shape
    u = (np.arange(width) + 0.5) / width
    v = (np.arange(height) + 0.5) / height
    best, best_iou = shapes[0], -1.0
    for shape in shapes:
        min_x, max_x, min_y, max_y = _BOUNDS[shape]
        px, py = min_x + u * (max_x - min_x), min_y + v * (max_y - min_y)
        template = _inside_unit_shape(shape, px[None, :], py[:, None])
        iou = float((template & blob).sum() / max(1, (template | blob).sum()))
        if iou > best_iou:
            best, best_iou = shape, iou
    return best, best_iou


def _check_rgb(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, Sequence) or len(value) != 3:
        raise TypeError(f"`{name}` must be an (R, G, B) triple, got {describe(value)}.")
    return np.array([check_float(name, c, minimum=0, maximum=255) for c in value], dtype=np.float32)


def detect_objects(
    image: Any,
    *,
    colors: Sequence[str] = tuple(COLORS),
    shapes: Sequence[str] = SHAPES,
    background: Sequence[float] | None = None,
    min_area: int | None = None,
    max_color_distance: float = 100.0,
) -> list[DetectedObject]:
    """Find the coloured shapes of a flat-colour image (a flat scene, or a generated image of one).

    Each pixel takes the nearest of the background and the palette ``colors`` (pixels further than
    ``max_color_distance`` from all of them are ignored); each 4-connected region of one palette colour
    with at least ``min_area`` pixels is a detection, whose shape is the outline that best fills its
    bounding box. Objects split in two by an occluder give two detections. Not meant for the textured
    style, whose shading moves pixels away from the palette.

    Args:
        image: PIL image, numpy array, bytes or path (anything :func:`hf_vtok.utils.validation.load_image` takes).
        colors, shapes: the palette colours and shape kinds to look for.
        background: RGB (0-255) of the background; default: the median of the border pixels.
        min_area: smallest region kept, in pixels; default: 0.3% of the image (12 pixels at 64 px).
        max_color_distance: largest RGB distance (0-255 units) at which a pixel still counts as a colour.

    Returns:
        Detections, largest first.
    """
    rgb = np.asarray(load_image(image), dtype=np.float32)
    colors = _check_names("colors", colors, tuple(COLORS))
    shapes = _check_names("shapes", shapes, SHAPES)
    height, width = rgb.shape[:2]
    if min_area is None:
        min_area = max(1, math.ceil(0.003 * height * width))
    min_area = check_int("min_area", min_area, minimum=1)
    max_color_distance = check_float("max_color_distance", max_color_distance, minimum=0, strict_minimum=True)
    if background is None:
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        background = np.median(border, axis=0)
    else:
        background = _check_rgb("background", background)

    references = np.vstack([background[None], np.array([COLORS[c] for c in colors], dtype=np.float32)])
    distances = np.linalg.norm(rgb[:, :, None, :] - references[None, None], axis=-1)
    nearest = distances.argmin(axis=-1)
    nearest[distances.min(axis=-1) > max_color_distance] = -1

    detections = []
    for reference, color in enumerate(colors, start=1):
        components, count = ndimage.label(nearest == reference)
        if count == 0:
            continue
        areas = np.bincount(components.ravel(), minlength=count + 1)
        for component, box in enumerate(ndimage.find_objects(components), start=1):
            if areas[component] < min_area:
                continue
            blob = components[box] == component
            shape, score = _classify_shape(blob, shapes)
            rows, cols = np.nonzero(blob)
            detections.append(
                DetectedObject(
                    color=color,
                    shape=shape,
                    x=float((cols.mean() + box[1].start + 0.5) / width),
                    y=float((rows.mean() + box[0].start + 0.5) / height),
                    area=int(areas[component]),
                    bbox=(box[1].start, box[0].start, box[1].stop, box[0].stop),
                    shape_score=score,
                )
            )
    return sorted(detections, key=lambda detection: -detection.area)


@dataclass
class AttributeReport:
    """Result of :func:`check_attributes`.

    ``matches`` has one dict per expected object: ``expected`` (the dict given), ``detected`` (the
    :class:`DetectedObject` of that colour, or None), ``color_found`` and ``shape_correct``.
    """

    matches: list[dict[str, Any]]
    detections: list[DetectedObject]

    @property
    def color_accuracy(self) -> float:
        """Share of expected objects for which a blob of their colour was found."""
        return float(np.mean([m["color_found"] for m in self.matches])) if self.matches else 1.0

    @property
    def shape_accuracy(self) -> float:
        """Share of expected objects found with their colour and their shape."""
        return float(np.mean([m["shape_correct"] for m in self.matches])) if self.matches else 1.0

    @property
    def count_correct(self) -> bool:
        return len(self.detections) == len(self.matches)

    @property
    def all_correct(self) -> bool:
        return self.count_correct and all(m["shape_correct"] for m in self.matches)


def check_attributes(
    image: Any, expected_objects: Sequence[Mapping[str, Any]], **detect_kwargs
) -> AttributeReport:
    """Check that an image shows the expected objects with the expected colours and shapes.

    Each expected object (a mapping with ``color`` and ``shape``, optionally ``x``/``y`` such as a row of
    the dataset's ``objects`` column) is matched to an unused detection of its colour: the nearest one
    when a centre is given, else the largest.

    Args:
        image: the picture to check (see :func:`detect_objects`).
        expected_objects: what the picture should show.
        **detect_kwargs: passed to :func:`detect_objects`.
    """
    if isinstance(expected_objects, (str, Mapping)) or not isinstance(expected_objects, Sequence):
        raise TypeError(f"`expected_objects` must be a list of dicts, got {describe(expected_objects)}.")
    for i, expected in enumerate(expected_objects):
        if not isinstance(expected, Mapping) or "color" not in expected or "shape" not in expected:
            raise ValueError(
                f"`expected_objects[{i}]` must be a dict with 'color' and 'shape', got {describe(expected)}."
            )
        check_choice(f"expected_objects[{i}]['color']", expected["color"], tuple(COLORS))
        check_choice(f"expected_objects[{i}]['shape']", expected["shape"], SHAPES)

    detections = detect_objects(image, **detect_kwargs)
    unused = list(detections)
    matches = []
    for expected in expected_objects:
        candidates = [d for d in unused if d.color == expected["color"]]
        detected = None
        if candidates:
            if "x" in expected and "y" in expected:
                detected = min(candidates, key=lambda d: math.hypot(d.x - expected["x"], d.y - expected["y"]))
            else:
                detected = candidates[0]  # detections are sorted largest first
            unused.remove(detected)
        matches.append(
            {
                "expected": dict(expected),
                "detected": detected,
                "color_found": detected is not None,
                "shape_correct": detected is not None and detected.shape == expected["shape"],
            }
        )
    return AttributeReport(matches=matches, detections=detections)
