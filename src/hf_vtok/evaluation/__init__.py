"""Evaluation: object-discovery and reconstruction metrics."""

from .metrics import (
    adjusted_rand_index,
    color_kmeans_segmentation,
    foreground_ari,
    mean_iou_matched,
    psnr,
    ssim,
)

__all__ = [
    "adjusted_rand_index",
    "color_kmeans_segmentation",
    "foreground_ari",
    "mean_iou_matched",
    "psnr",
    "ssim",
]
