"""training/probe_relations.py: the probes that tell whether an MLLM (or its ids) knows where objects are."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from hf_vtok.data import generate_shapes_dataset
from hf_vtok.data.shapes import ObjectSpec, spatial_relation


@pytest.fixture(scope="module")
def probe():
    path = Path(__file__).resolve().parents[1] / "training" / "probe_relations.py"
    spec = importlib.util.spec_from_file_location("probe_relations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_position_questions_are_paired_with_their_true_relation_first(probe):
    scenes = generate_shapes_dataset(24, image_size=64, style="flat", seed=5, with_edits=False, progress=False)
    pairs = probe._position_pairs(scenes)
    assert len(pairs) >= 12
    for index, true, false in pairs:
        objects = {f"{o['color']} {o['shape']}": ObjectSpec(o["shape"], o["color"], o["size"], o["x"], o["y"], 0)
                   for o in scenes[index]["objects"]}  # fmt: skip
        for question, expected in ((true, True), (false, False)):
            first, relation, second = re.fullmatch(r"Is the (.+) (left of|right of|above|below) the (.+)\?", question).groups()
            assert (relation == spatial_relation(objects[first], objects[second])) is expected, question


def test_id_probes_read_a_position_only_when_the_ids_carry_it(probe):
    rng = np.random.default_rng(0)
    scenes = [[{"color": color, "shape": "circle", "size": "small", "x": float(x), "y": float(y)}
               for color, x, y in zip(("red", "blue", "green"), rng.uniform(0, 1, 3), rng.uniform(0, 1, 3))]
              for _ in range(600)]  # fmt: skip
    noise = rng.integers(0, 16, size=(600, 8))
    carrying = noise.copy()
    carrying[:, 0] = [int(scene[0]["x"] < 0.5) for scene in scenes]  # the red object's half, in the first id
    readable = probe.id_probes({"image_ids": carrying.tolist(), "objects": scenes})["red object in the left half"]
    blind = probe.id_probes({"image_ids": noise.tolist(), "objects": scenes})["red object in the left half"]
    assert readable["accuracy"] > 0.98 and readable["test_scenes"] == 120
    assert blind["accuracy"] < blind["majority"] + 0.1
