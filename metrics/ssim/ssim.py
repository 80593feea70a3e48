"""SSIM as an `evaluate` metric: ``evaluate.load("./metrics/ssim")`` (local module, works offline).

The computation is ``hf_vtok.evaluation.metrics.ssim`` (Gaussian window 11, sigma 1.5, K1 = 0.01, K2 = 0.03), i.e.
scikit-image's ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``.
"""

import datasets
import evaluate
import numpy as np

from hf_vtok.evaluation.metrics import ssim

_DESCRIPTION = """Structural similarity (Wang et al. 2004) between each prediction and its reference image, averaged
over channels, then over images. Identical images give 1."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: images as [H, W] or [H, W, C] float arrays (nested lists) with values in [0, data_range], at least
        `window_size` pixels on each side.
    references: images of the same shapes.
    data_range (float, default 1.0), window_size (odd int, default 11), sigma (float, default 1.5).
Returns:
    ssim: mean over images; per_image: one value per image.
"""

_CITATION = """@article{wang2004image, title={Image quality assessment: from error visibility to structural
similarity}, author={Wang, Zhou and Bovik, Alan C and Sheikh, Hamid R and Simoncelli, Eero P},
journal={IEEE Transactions on Image Processing}, year={2004}}"""

_IMAGE = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float64"))))


def _as_image(value):
    array = np.asarray(value, dtype=np.float64)
    return array[..., None] if array.ndim == 2 else array


class Ssim(evaluate.Metric):
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

    def _compute(self, predictions, references, data_range=1.0, window_size=11, sigma=1.5):
        if len(predictions) != len(references):
            raise ValueError(f"`predictions` and `references` must hold as many images, got {len(predictions)} and {len(references)}.")
        values = [
            ssim(_as_image(true), _as_image(pred), data_range=data_range, window_size=window_size, sigma=sigma)
            for pred, true in zip(predictions, references)
        ]
        return {"ssim": float(np.mean(values)), "per_image": values}
