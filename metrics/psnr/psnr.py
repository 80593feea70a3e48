"""PSNR as an `evaluate` metric: ``evaluate.load("./metrics/psnr")`` (local module, works offline).

The computation is ``hf_vtok.evaluation.metrics.psnr`` on channel-last images (``[H, W]`` or ``[H, W, C]``).
"""

import datasets
import evaluate
import numpy as np

from hf_vtok.evaluation.metrics import psnr

_DESCRIPTION = """Peak signal-to-noise ratio in dB between each prediction and its reference image, averaged over
images. Identical images give inf."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: images as [H, W] or [H, W, C] float arrays (nested lists) with values in [0, data_range].
    references: images of the same shapes.
    data_range (float, default 1.0): the value range (255 for 8-bit values).
Returns:
    psnr: mean over images; per_image: one value per image.
"""

_CITATION = ""

_IMAGE = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float64"))))


def _as_image(value):
    array = np.asarray(value, dtype=np.float64)
    return array[..., None] if array.ndim == 2 else array


class Psnr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": _IMAGE, "references": _IMAGE}),
                datasets.Features({"predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                                   "references": datasets.Sequence(datasets.Sequence(datasets.Value("float64")))}),
            ],
        )

    def _compute(self, predictions, references, data_range=1.0):
        if len(predictions) != len(references):
            raise ValueError(f"`predictions` and `references` must hold as many images, got {len(predictions)} and {len(references)}.")
        values = [psnr(_as_image(true), _as_image(pred), data_range=data_range) for pred, true in zip(predictions, references)]
        return {"psnr": float(np.mean(values)), "per_image": values}
