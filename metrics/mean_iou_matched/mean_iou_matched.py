"""Matched mean IoU as an `evaluate` metric: ``evaluate.load("./metrics/mean_iou_matched")`` (local, offline).

The computation is ``hf_vtok.evaluation.metrics.mean_iou_matched``: predicted segments are matched one-to-one to the
true objects (Hungarian algorithm on IoU), objects without a segment score 0, the mean is taken over objects and
then over images.
"""

import datasets
import evaluate
import numpy as np

from hf_vtok.evaluation.metrics import mean_iou_matched

_DESCRIPTION = """Mean IoU of the true objects with the predicted segments matched to them one-to-one (object
discovery: slot masks or cluster maps against instance masks). 1 is a perfect segmentation."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted id maps, one [H, W] integer array (nested lists) per image.
    references: true instance masks of the same shapes.
    background_id (int, default 0): the id of background pixels in `references` (not an object).
Returns:
    mean_iou: mean over images with objects; per_image: one value per image (NaN without objects).
"""

_CITATION = ""

_MASK = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))


class MeanIouMatched(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _MASK, "references": _MASK}),
        )

    def _compute(self, predictions, references, background_id=0):
        if len(predictions) != len(references):
            raise ValueError(f"`predictions` and `references` must hold as many images, got {len(predictions)} and {len(references)}.")
        values = [
            mean_iou_matched(np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64), background_id=background_id)
            for pred, true in zip(predictions, references)
        ]
        finite = [v for v in values if np.isfinite(v)]
        return {"mean_iou": float(np.mean(finite)) if finite else float("nan"), "per_image": values}
