"""`build_model(config)`: the network of the config's backbone, SSD300/SSD512-VGG16
(`ssd.modeling.vgg16_ssd`) or SSDLite-MobileNetV2 (`ssd.modeling.ssdlite`)."""

from __future__ import annotations

import keras

from ssd.config.architectures import MOBILENET_V2, feature_map_sizes, get_architecture
from ssd.config.loading import Config
from ssd.modeling.anchors import check_feature_map_sizes
from ssd.modeling.ssdlite import build_ssdlite_mobilenet_v2
from ssd.modeling.vgg16_ssd import build_vgg16_ssd


def build_model(config: Config) -> keras.Model:
    """Builds the network of `config.model.backbone` under the current global Keras dtype policy:
    SSD300/SSD512-VGG16 here, SSDLite-MobileNetV2 from `ssd.modeling.ssdlite`.

    Input: images [B, H, W, 3] in the config's `data.preprocessing` convention (ssd.data.preprocessing),
    H = W = model.input_size.
    Output: (cls_logits [B, A, num_classes], box_encodings [B, A, 4]), always float32, A the
    number of default boxes of `ssd.modeling.anchors.generate_anchors(config)`, in its order.
    """
    if config.model.backbone == MOBILENET_V2:
        return _build_ssdlite(config)
    return build_vgg16_ssd(config)


def _build_ssdlite(config: Config) -> keras.Model:
    model_config = config.model
    architecture = get_architecture(model_config.architecture)
    check_feature_map_sizes(config, feature_map_sizes(architecture.name, model_config.input_size))
    model = build_ssdlite_mobilenet_v2(
        model_config.num_classes, config.anchors.boxes_per_location,
        input_size=model_config.input_size, width_multiplier=model_config.width_multiplier,
        extra_channels=architecture.extra_channels,
        batch_norm_momentum=model_config.batch_norm_momentum)
    return model
