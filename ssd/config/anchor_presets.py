"""The anchor presets' tables: what `anchors.preset` fills into the fields a recipe leaves empty.

tf1:   the TF1 reference's scales (fractions of the image) with its ratio order (SSD300; for
       SSD512, which it does not have, the Caffe sizes as fractions);
caffe: the original release's min/max sizes in pixels (SSD300 and SSD512, VOC);
tfod:  the TF Object Detection API's ssdlite_mobilenet_v2 boxes (scales linear over the maps).
`ssd.modeling.anchors` turns the filled fields into boxes.
"""

from __future__ import annotations

import math
from typing import Any

from ssd.config.architectures import ARCHITECTURES, feature_map_sizes
from ssd.config.schema import TF1, TFOD

_R4 = [1.0, 2.0, 0.5]
_TF1_R6 = [1.0, 2.0, 3.0, 0.5, 1.0 / 3.0]
_CAFFE_R6 = [1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]
_CAFFE_SIZES = {  # (min_sizes, max_sizes) in pixels
    "ssd300": ([30.0, 60.0, 111.0, 162.0, 213.0, 264.0], [60.0, 111.0, 162.0, 213.0, 264.0, 315.0]),
    "ssd512": ([35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8],
               [76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6]),
}
_TF1_SCALES_300 = ([0.1, 0.2, 0.375, 0.55, 0.725, 0.9],
                   [0.1414, 0.2739, 0.4541, 0.6315, 0.8078, 0.9836])


def _tf1_scales(architecture: str) -> tuple[list[float], list[float]]:
    if architecture == "ssd300":
        return list(_TF1_SCALES_300[0]), list(_TF1_SCALES_300[1])
    # the TF1 reference has no SSD512: the Caffe sizes as fractions of the input
    input_size = ARCHITECTURES[architecture].input_size
    mins, maxs = _CAFFE_SIZES[architecture]
    return ([m / input_size for m in mins],
            [math.sqrt(a * b) / input_size for a, b in zip(mins, maxs)])


# the TF Object Detection API's ssdlite_mobilenet_v2 anchors: scales linear over the maps, the
# ratios in its order, and its reduced lowest layer (2 ratio boxes at s_1 and a 0.1 square)
_TFOD_MIN_SCALE, _TFOD_MAX_SCALE = 0.2, 0.95
_TFOD_RATIOS = [1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]
_TFOD_LOWEST_RATIOS = [2.0, 0.5]
_TFOD_LOWEST_SQUARE = 0.1


def tfod_scales(num_maps: int) -> tuple[list[float], list[float]]:
    """(scales, extra_scales): s_k = min + (max - min)(k - 1)/(n - 1), extra square sqrt(s_k
    s_k+1) with s_n+1 = 1, except on the lowest map, whose extra square is 0.1."""
    step = (_TFOD_MAX_SCALE - _TFOD_MIN_SCALE) / (num_maps - 1)
    scales = [_TFOD_MIN_SCALE + step * k for k in range(num_maps)]
    following = scales[1:] + [1.0]
    extra = [math.sqrt(a * b) for a, b in zip(scales, following)]
    return scales, [_TFOD_LOWEST_SQUARE] + extra[1:]


def preset_values(preset: str, architecture: str) -> dict[str, Any]:
    """The anchor fields of `preset` for `architecture` (those its tables know)."""
    spec = ARCHITECTURES[architecture]
    maps = feature_map_sizes(architecture, spec.input_size)
    values: dict[str, Any] = dict(feature_map_sizes=maps, steps=list(spec.steps))
    if preset == TFOD:
        values["aspect_ratios"] = ([list(_TFOD_LOWEST_RATIOS)]
                                   + [list(_TFOD_RATIOS) for _ in maps[1:]])
        values["scales"], values["extra_scales"] = tfod_scales(len(maps))
        return values
    wide_ratios = _TF1_R6 if preset == TF1 else _CAFFE_R6
    values["aspect_ratios"] = [list(wide_ratios) if wide else list(_R4)
                               for wide in spec.ratio_3_layers]
    # the tf1 / caffe tables know the VGG architectures only; elsewhere the sizes must be given
    if preset == TF1 and architecture in _CAFFE_SIZES:
        values["scales"], values["extra_scales"] = _tf1_scales(architecture)
    elif architecture in _CAFFE_SIZES:
        mins, maxs = _CAFFE_SIZES[architecture]
        values.update(min_sizes=list(mins), max_sizes=list(maxs))
    return values
