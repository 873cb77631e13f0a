"""SSDLite-MobileNetV2 at inference, until the configuration has an architecture entry for it.

What the SSD300-VGG16 config provides implicitly, stated here for ssd.ssdlite's network:
  * default boxes: the config's anchor preset (scales and aspect ratios, so 4, 6, 6, 6, 4, 4 boxes
    per location with the tf1 preset) placed on SSDLite's six source maps
    (`ssd.ssdlite.feature_map_sizes`: 20, 10, 5, 3, 2, 1 at 320), one cell per step of
    input_size / map size pixels. Both have six source maps, so the scales carry over one to one;
    they are SSD300's, not the TF Object Detection API's 0.2..0.95.
  * input: MobileNetV2's convention, RGB scaled to [-1, 1] (not VGG16's BGR minus the mean).

`ssdlite_config` returns a config whose model.input_size and anchors describe SSDLite; it is built
with dataclasses.replace, so config validation (which knows the VGG16 architectures only) is not
run on it: use it for default boxes, post-processing and export, not for training.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from ssd.anchors import location_box_sizes
from ssd.config import Config
from ssd.ssdlite import build_ssdlite_mobilenet_v2, feature_map_sizes


def ssdlite_config(config: Config, input_size: int = 320) -> Config:
    """`config` with the input size and default-box grid of SSDLite-MobileNetV2 (module docstring)."""
    maps = feature_map_sizes(input_size)
    if len(maps) != len(config.anchors.feature_map_sizes):
        raise ValueError(f"SSDLite has {len(maps)} source maps, the config's anchors describe "
                         f"{len(config.anchors.feature_map_sizes)}")
    anchors = dataclasses.replace(config.anchors, feature_map_sizes=maps,
                                  steps=[input_size / size for size in maps])
    model = dataclasses.replace(config.model, input_size=input_size)
    return dataclasses.replace(config, model=model, anchors=anchors)


def boxes_per_location(config: Config) -> list[int]:
    return [len(location_box_sizes(config, layer)) for layer in range(len(config.anchors.feature_map_sizes))]


def build_ssdlite_model(config: Config, width_multiplier: float = 1.0) -> keras.Model:
    """The network for a config from `ssdlite_config` (random initialization)."""
    return build_ssdlite_mobilenet_v2(config.model.num_classes, boxes_per_location(config),
                                      config.model.input_size, width_multiplier)


def preprocess_mobilenet(images: tf.Tensor, config: Config) -> tf.Tensor:
    """uint8 RGB [B, H, W, 3] -> float32 [B, S, S, 3] in [-1, 1] (bilinear resize to S)."""
    size = config.model.input_size
    resized = tf.image.resize(tf.cast(images, tf.float32), [size, size])
    return resized / 127.5 - 1.0
