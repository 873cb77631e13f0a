"""Pictures of an evaluation for TensorBoard: an image's detections beside its ground truth."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from ssd.config.loading import Config
from ssd.data.preprocessing import to_display
from ssd.draw import draw_boxes, side_by_side

EVAL_IMAGES = 6  # the first images of the evaluation set, drawn at each evaluation
DISPLAY_THRESHOLD = 0.5  # detections drawn on those images


def display_size(original_shape: Sequence[int], input_size: int) -> tuple[int, int]:
    """(height, width) with the original aspect ratio and the longer side `input_size`."""
    height, width = (int(v) for v in original_shape)
    scale = input_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def evaluation_pictures(samples: Sequence[dict[str, np.ndarray]], config: Config,
                        score_threshold: float = DISPLAY_THRESHOLD) -> list[Image.Image]:
    """Each sample's detections scoring at least `score_threshold` (left, with class names and
    scores) beside its ground truth (right).

    The pictures are the model's input turned back into RGB pixels (the evaluation data holds
    no encoded image after preprocessing), stretched back to the original aspect ratio with
    the longer side the input size: what the network saw, shaped as the photo.
    """

    names = list(config.data.class_names)
    pictures = []
    for sample in samples:
        rgb = to_display(tf.constant(sample["image"][np.newaxis]), config)[0].numpy()
        height, width = display_size(sample["original_shape"], config.model.input_size)
        image = Image.fromarray(np.round(rgb * 255).astype(np.uint8)).resize((width, height),
                                                                              Image.BILINEAR)
        scale = np.array([height, width, height, width], np.float32)
        n, n_gt = int(sample["num_detections"]), int(sample["num_gt"])
        detected = draw_boxes(image, sample["boxes"][:n] * scale, sample["classes"][:n], names,
                              sample["scores"][:n], score_threshold=score_threshold)
        truth = draw_boxes(image, sample["gt_boxes"][:n_gt] * scale, sample["gt_labels"][:n_gt], names)
        pictures.append(side_by_side(detected, truth, titles=(f"detections >= {score_threshold:g}",
                                                              "ground truth")))
    return pictures
