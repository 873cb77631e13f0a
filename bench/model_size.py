"""Parameters and multiply-adds of the networks, next to the published figures.

    python bench/model_size.py

Builds SSD300-VGG16 and SSD512-VGG16 from the `ssd300_voc0712` / `ssd512_voc0712` recipes (21
classes, and 81 classes as on COCO) and SSDLite-MobileNetV2 at 320x320 (81 and 21 classes; 6
boxes at every map, and the TF Object Detection API's 3 boxes on the first map), and prints
their parameters (Keras' count_params: batch-norm moving statistics included; and the trainable
ones alone, which is what the published figures match best) and multiply-adds
per image (`ssd.model_size.count_multiply_adds`: convolutions and dense layers only, as the
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

from ssd.config import load_config  # noqa: E402
from ssd.model import build_model  # noqa: E402
from ssd.model_size import count_multiply_adds  # noqa: E402
from ssd.ssdlite import build_ssdlite_mobilenet_v2  # noqa: E402

COCO_CLASSES = 81  # 80 object classes + background


def _vgg(recipe: str, num_classes: int):
    overrides = {}
    if num_classes != 21:
        overrides = {"model.num_classes": num_classes,
                     "data.class_names": [f"class_{i}" for i in range(1, num_classes)]}
    return lambda: build_model(load_config(recipe, overrides))


def _ssdlite(num_classes: int, boxes: list[int]):
    return lambda: build_ssdlite_mobilenet_v2(num_classes, boxes, input_size=320)


# (name, builder, published parameters, published multiply-adds); None: not published
NETWORKS = (
    ("SSD300-VGG16, 21 classes", _vgg("ssd300_voc0712", 21), None, None),
    ("SSD300-VGG16, 81 classes", _vgg("ssd300_voc0712", COCO_CLASSES), 36.1e6, 35.2e9),
    ("SSD512-VGG16, 21 classes", _vgg("ssd512_voc0712", 21), None, None),
    ("SSD512-VGG16, 81 classes", _vgg("ssd512_voc0712", COCO_CLASSES), 36.1e6, 99.5e9),
    ("SSDLite-MobileNetV2 320, 81 classes, boxes 6x6", _ssdlite(COCO_CLASSES, [6] * 6),
     4.3e6, 0.8e9),
    ("SSDLite-MobileNetV2 320, 81 classes, boxes 3,6x5", _ssdlite(COCO_CLASSES, [3] + [6] * 5),
     4.3e6, 0.8e9),
    ("SSDLite-MobileNetV2 320, 21 classes, boxes 6x6", _ssdlite(21, [6] * 6), None, None),
    ("SSDLite-MobileNetV2 320, 21 classes, boxes 3,6x5", _ssdlite(21, [3] + [6] * 5), None, None),
)


def _figure(value, unit, scale):
    return "-" if value is None else f"{value / scale:.2f}{unit}"


def main() -> None:
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
