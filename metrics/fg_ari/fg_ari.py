"""FG-ARI as an `evaluate` metric: ``evaluate.load("./metrics/fg_ari")`` (local module, works offline).

The computation is ``hf_vtok.evaluation.metrics.foreground_ari``: the adjusted Rand index over the pixels whose
true id is not the background, per image, averaged over images (images without foreground are skipped).
"""

import datasets
import evaluate
import numpy as np

from hf_vtok.evaluation.metrics import foreground_ari

_DESCRIPTION = """Foreground adjusted Rand index (Greff et al. 2019): do pixels of one object end up in one predicted
segment, and pixels of different objects in different ones, whatever the labels and however the background is
split? 1 is a perfect grouping, about 0 a random one."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted id maps, one [H, W] integer array (nested lists) per image.
    references: true instance masks of the same shapes; `background_id` marks the background.
    background_id (int, default 0): the id of background pixels in `references`.
Returns:
    fg_ari: mean over images with foreground; per_image: one value per image (NaN without foreground).
Examples:
    >>> metric = evaluate.load("./metrics/fg_ari")
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 2], [2, 2]]])["fg_ari"]
    1.0
"""

_CITATION = """@inproceedings{greff2019multi, title={Multi-Object Representation Learning with Iterative Variational
Inference}, author={Greff, Klaus and others}, booktitle={ICML}, year={2019}}"""

_MASK = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))


class FgAri(evaluate.Metric):
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
            foreground_ari(np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64), background_id=background_id)
            for pred, true in zip(predictions, references)
        ]
        finite = [v for v in values if np.isfinite(v)]
        return {"fg_ari": float(np.mean(finite)) if finite else float("nan"), "per_image": values}
