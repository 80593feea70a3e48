"""Evaluation: reconstruction, object-discovery, perceptual and CLIP metrics, the papers' token analyses, the
MLLM's shapes-world scores, and ``hf-vtok eval`` (see docs/evaluation.md).

The perceptual/CLIP metrics, the analyses and the MLLM scores import their heavier dependencies lazily.
"""

from .analysis import (
    NATURAL_PHOTO_NAMES,
    ReplacementResult,
    line_chart,
    natural_photos,
    prefix_decoding_curve,
    random_code_replacement,
    replace_random_codes,
    tokens_by_object_count,
)
from .metrics import (
    adjusted_rand_index,
    color_kmeans_segmentation,
    foreground_ari,
    mean_iou_matched,
    psnr,
    ssim,
)
from .mllm import (
    caption_attribute_accuracy,
    editing_accuracy,
    evaluate_mllm,
    load_mllm_folder,
    mentioned_pairs,
    qa_accuracy,
    text_to_image_accuracy,
)
from .perceptual import clip_image_similarity, clip_score, load_vision_backbone, perceptual_distance
from .report import format_table, run_eval
from .tokenizers import (
    LoadedTokenizer,
    TokenizerEvaluation,
    evaluate_tokenizer,
    load_tokenizer_folder,
    resize_images,
)

__all__ = [
    "NATURAL_PHOTO_NAMES",
    "LoadedTokenizer",
    "ReplacementResult",
    "TokenizerEvaluation",
    "adjusted_rand_index",
    "caption_attribute_accuracy",
    "clip_image_similarity",
    "clip_score",
    "color_kmeans_segmentation",
    "editing_accuracy",
    "evaluate_mllm",
    "evaluate_tokenizer",
    "foreground_ari",
    "format_table",
    "line_chart",
    "load_mllm_folder",
    "load_tokenizer_folder",
    "load_vision_backbone",
    "mean_iou_matched",
    "mentioned_pairs",
    "natural_photos",
    "perceptual_distance",
    "prefix_decoding_curve",
    "psnr",
    "qa_accuracy",
    "random_code_replacement",
    "replace_random_codes",
    "resize_images",
    "run_eval",
    "ssim",
    "text_to_image_accuracy",
    "tokens_by_object_count",
]
