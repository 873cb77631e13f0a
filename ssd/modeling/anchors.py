"""Default boxes (anchors) of SSD, computed once in numpy from the anchor configuration.

Boxes are normalized [ymin, xmin, ymax, xmax]. The flat order is the order of the model's head
outputs: source layer by layer, then row-major over the cells (y, x) of that layer's feature map,
then the box index at the location. Cell (i, j) of a layer with step `s` pixels has its centre at
((i + offset) * s / input_size, (j + offset) * s / input_size).

Per-location boxes, for the presets of `AnchorConfig`:
  tf1:   the extra square of side extra_scales[l], then one box per ratio r in aspect_ratios[l]
         with h = scales[l] / sqrt(r), w = scales[l] * sqrt(r);
  tfod:  the same boxes in the TF Object Detection API's order: one box per ratio first, the
         extra square last (SSDLite's lowest map: (s_1, 2), (s_1, 1/2), then the 0.1 square);
         with `anchors.lowest_square_first` the lowest map's extra square comes first, the API's
         exact order there: (0.1, 1), (s_1, 2), (s_1, 1/2);
  caffe: the square of side min_size, the square of side sqrt(min_size * max_size), then one box per
         remaining ratio r in aspect_ratios[l][1:] with h = min_size / sqrt(r), w = min_size * sqrt(r);
         sizes are pixels, truncated to whole pixels first (`caffe_pixel_size`), and are divided
         by input_size.
"""

from __future__ import annotations

import math

import numpy as np

from ssd.config.loading import TF1, TFOD, Config


def caffe_pixel_size(size: float) -> int:
    """A configured min/max size as Caffe's PriorBox layer uses it: truncated to an integer.

    Its forward pass copies each size into an `int` before computing the boxes, so the released
    SSD512 models were trained with min_size 35 for the configured 35.84 (and sqrt(35 * 76) for
    the extra square); integer sizes such as SSD300's are unchanged.
    """
    return int(size)


def location_box_sizes(config: Config, layer: int) -> np.ndarray:
    """[K, 2] (height, width) of the boxes at one location of `layer`, normalized, in box order."""
    anchors = config.anchors
    ratios = np.asarray(anchors.aspect_ratios[layer], dtype=np.float64)
    if anchors.preset in (TF1, TFOD):
        extra = anchors.extra_scales[layer]
        square = [(extra, extra)]
        scale = anchors.scales[layer]
    elif anchors.preset == "caffe":
        size = config.model.input_size
        low = caffe_pixel_size(anchors.min_sizes[layer])
        high = caffe_pixel_size(anchors.max_sizes[layer])
        min_size = low / size
        extra = math.sqrt(low * high) / size
        square = [(min_size, min_size), (extra, extra)]
        scale = min_size
        ratios = ratios[1:]  # the ratio-1 box is the min_size square above
    else:
        raise ValueError(f"anchors.preset: must be {TF1!r}, 'caffe' or {TFOD!r}, "
                         f"got {anchors.preset!r}")
    root = np.sqrt(ratios)
    ratio_boxes = np.stack([scale / root, scale * root], axis=-1)
    squares = np.asarray(square, dtype=np.float64)
    if anchors.preset == TFOD and not (layer == 0 and anchors.lowest_square_first):
        return np.concatenate([ratio_boxes, squares], axis=0)
    return np.concatenate([squares, ratio_boxes], axis=0)


def layer_anchors(config: Config, layer: int) -> np.ndarray:
    """[F, F, K, 4] float64 boxes of one source layer, indexed (y, x, box)."""
    anchors = config.anchors
    size = anchors.feature_map_sizes[layer]
    centres = (np.arange(size, dtype=np.float64) + anchors.offset) * anchors.steps[layer]
    centres /= config.model.input_size
    sizes = location_box_sizes(config, layer)  # [K, 2]
    cy = centres[:, None, None]  # varies along y
    cx = centres[None, :, None]  # varies along x
    half_h = sizes[None, None, :, 0] / 2.0
    half_w = sizes[None, None, :, 1] / 2.0
    shape = (size, size, len(sizes))
    return np.stack([np.broadcast_to(cy - half_h, shape), np.broadcast_to(cx - half_w, shape),
                     np.broadcast_to(cy + half_h, shape), np.broadcast_to(cx + half_w, shape)],
                    axis=-1)


def num_anchors_per_layer(config: Config) -> list[int]:
    """Number of default boxes contributed by each source layer."""
    return [f * f * len(location_box_sizes(config, layer))
            for layer, f in enumerate(config.anchors.feature_map_sizes)]


def generate_anchors(config: Config) -> np.ndarray:
    """[A, 4] float32 normalized default boxes in the head output order (see module docstring).

    With `anchors.clip` the boxes are clipped to [0, 1]; by default they may extend past the image.
    """
    layers = [layer_anchors(config, layer).reshape(-1, 4)
              for layer in range(len(config.anchors.feature_map_sizes))]
    boxes = np.concatenate(layers, axis=0)
    if config.anchors.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    return boxes.astype(np.float32)


def check_feature_map_sizes(config, produced: list[int]) -> None:
    """The anchors are laid on the maps the network produces: same sizes, one ratio list each."""
    expected = list(config.anchors.feature_map_sizes)
    if expected != list(produced):
        raise ValueError(
            f"anchors.feature_map_sizes is {expected} but {config.model.architecture} at input "
            f"size {config.model.input_size} produces source maps {list(produced)}")
    if len(config.anchors.aspect_ratios) != len(produced):
        raise ValueError(
            f"anchors.aspect_ratios has {len(config.anchors.aspect_ratios)} lists "
            f"but {config.model.architecture} has {len(produced)} source maps")
