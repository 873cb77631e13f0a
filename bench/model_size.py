"""Parameters and multiply-adds of the networks, next to the published figures.

    python bench/model_size.py

Builds every network through `ssd.modeling.build.build_model` from a recipe: SSD300-VGG16 and
SSD512-VGG16 from `ssd300_voc0712` / `ssd512_voc0712` (21 classes, and 81 classes as on COCO)
and SSDLite-MobileNetV2 320 from `ssdlite320_mobilenetv2_coco` / `_voc` (81 and 21 classes; the
TF Object Detection API's anchors: 3 boxes on the first map, 6 elsewhere), plus SSDLite with 6
boxes at every map for comparison, and prints
their parameters (Keras' count_params: batch-norm moving statistics included; and the trainable
ones alone, which is what the published figures match best) and multiply-adds
per image (`ssd.modeling.model_size.count_multiply_adds`: convolutions and dense layers only, as the
papers count them).

Published figures: MobileNetV2 paper (Sandler et al., CVPR 2018), Table 6, COCO models:
SSD300 36.1M parameters / 35.2B multiply-adds, SSD512 36.1M / 99.5B, SSDLite-MobileNetV2 (320)
4.3M / 0.8B. The SSD paper itself gives neither figure.
"""

from __future__ import annotations

import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ssd import cpu  # noqa: E402

cpu.prefer_onednn()  # before TensorFlow loads: the kernels the apps use

from ssd.config.loading import load_config  # noqa: E402
from ssd.modeling.build import build_model  # noqa: E402
from ssd.modeling.model_size import count_multiply_adds  # noqa: E402

COCO_CLASSES = 81  # 80 object classes + background


# the lowest map with the 5 ratios and the extra square too, instead of the reduced 3 boxes
_SIX_BOXES_EVERYWHERE = {"anchors.aspect_ratios": [[1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]] * 6}


def _recipe(recipe: str, num_classes: int | None = None, **overrides):
    if num_classes is not None:
        overrides.update({"model.num_classes": num_classes,
                          "data.class_names": [f"class_{i}" for i in range(1, num_classes)]})
    return lambda: build_model(load_config(recipe, overrides))


# (name, builder, published parameters, published multiply-adds); None: not published
NETWORKS = (
    ("SSD300-VGG16, 21 classes", _recipe("ssd300_voc0712"), None, None),
    ("SSD300-VGG16, 81 classes", _recipe("ssd300_voc0712", COCO_CLASSES), 36.1e6, 35.2e9),
    ("SSD512-VGG16, 21 classes", _recipe("ssd512_voc0712"), None, None),
    ("SSD512-VGG16, 81 classes", _recipe("ssd512_voc0712", COCO_CLASSES), 36.1e6, 99.5e9),
    ("SSDLite-MobileNetV2 320, 81 classes, boxes 3,6x5", _recipe("ssdlite320_mobilenetv2_coco"),
     4.3e6, 0.8e9),
    ("SSDLite-MobileNetV2 320, 81 classes, boxes 6x6",
     _recipe("ssdlite320_mobilenetv2_coco", **_SIX_BOXES_EVERYWHERE), 4.3e6, 0.8e9),
    ("SSDLite-MobileNetV2 320, 21 classes, boxes 3,6x5", _recipe("ssdlite320_mobilenetv2_voc"),
     None, None),
    ("SSDLite-MobileNetV2 320, 21 classes, boxes 6x6",
     _recipe("ssdlite320_mobilenetv2_voc", **_SIX_BOXES_EVERYWHERE), None, None),
)


def _figure(value, unit, scale):
    return "-" if value is None else f"{value / scale:.2f}{unit}"


def main() -> None:
    print(cpu.describe())
    header = f"{'network':<50} {'params':>8} {'paper':>8} {'mult-adds':>10} {'paper':>8}"
    print(header)
    print("-" * len(header))
    for name, build, paper_params, paper_macs in NETWORKS:
        start = time.perf_counter()
        model = build()
        params, macs = model.count_params(), count_multiply_adds(model)
        trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
        print(f"{name:<50} {_figure(params, 'M', 1e6):>8} {_figure(paper_params, 'M', 1e6):>8} "
              f"{_figure(macs, 'B', 1e9):>10} {_figure(paper_macs, 'B', 1e9):>8}   "
              f"({params:,} parameters, {trainable:,} trainable, {macs:,} multiply-adds; built in "
              f"{time.perf_counter() - start:.1f} s)", flush=True)
        del model


if __name__ == "__main__":
    main()
