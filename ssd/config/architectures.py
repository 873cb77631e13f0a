"""The facts of each SSD architecture, stated once: backbone, input size, extra layers, steps,
box layout, and each backbone's input convention.

Everything else is derived from this table: the source feature map sizes (by running the layer
geometry below), the anchor presets' defaults (`ssd.config.loading`), the validation of a config
(`ssd.config.validation`) and the networks themselves (`ssd.modeling.vgg16_ssd`, `ssd.modeling.ssdlite`). Pure Python:
loading a config needs neither TensorFlow nor Keras.

Backbones:
  vgg16 (ssd300, ssd512): source maps conv4_3, fc7, then every extra layer marked `is_source`;
    Caffe geometry (ceil-mode pooling, symmetric padding).
  mobilenet_v2 (ssdlite320, ssdlite300): source maps `block_13_expand_relu` (stride 16), `out_relu`
    (stride 32), then one per SSDLite extra layer (`extra_channels`), all with TensorFlow's
    'same' padding (see `ssd.modeling.ssdlite`).
"""

from __future__ import annotations

from dataclasses import dataclass

# conv4_3 follows three 2x2/s2 poolings (pool1..pool3) and fc7 four (pool4 too; pool5, fc6 and
# fc7 keep the size). They round the output size up, as Caffe's pooling does (75 -> 38).
POOLINGS_BEFORE_CONV4_3 = 3


@dataclass(frozen=True)
class ExtraLayer:
    """One extra-feature convolution; `padding` pixels are added on every side (Caffe style)."""

    name: str
    kernel: int
    channels: int
    stride: int
    padding: int
    is_source: bool  # its output feeds a head


VGG16 = "vgg16"
MOBILENET_V2 = "mobilenet_v2"
BACKBONES = (VGG16, MOBILENET_V2)

# The input convention of each backbone's pretrained weights (`data.preprocessing`):
#   caffe_bgr_mean: BGR on the 0..255 scale minus the ImageNet mean (`data.mean_rgb`): Caffe's
#     VGG16 read images with OpenCV and subtracted the mean without scaling;
#   tf_rgb_unit: RGB scaled to [-1, 1] (x / 127.5 - 1): Keras' and TF-slim's MobileNetV2.
CAFFE_BGR_MEAN = "caffe_bgr_mean"
TF_RGB_UNIT = "tf_rgb_unit"
PREPROCESSINGS = (CAFFE_BGR_MEAN, TF_RGB_UNIT)
BACKBONE_PREPROCESSING = {VGG16: CAFFE_BGR_MEAN, MOBILENET_V2: TF_RGB_UNIT}


@dataclass(frozen=True)
class Architecture:
    name: str
    backbone: str  # one of BACKBONES
    input_size: int  # square inputs of this side, in pixels
    steps: tuple[float, ...]  # pixels between anchor centres, one per source map
    # per source map: whether the tf1 / caffe presets' default boxes use the ratios 3 and 1/3
    # too (six boxes per location instead of four)
    ratio_3_layers: tuple[bool, ...]
    extra_layers: tuple[ExtraLayer, ...] = ()  # vgg16: the Caffe extra layers
    extra_channels: tuple[int, ...] = ()  # mobilenet_v2: SSDLite extra layer widths at 1.0

    @property
    def num_sources(self) -> int:
        if self.backbone == MOBILENET_V2:
            return 2 + len(self.extra_channels)
        return 2 + sum(extra.is_source for extra in self.extra_layers)


_EXTRAS_300 = (
    ExtraLayer("conv8_1", 1, 256, 1, 0, False),
    ExtraLayer("conv8_2", 3, 512, 2, 1, True),
    ExtraLayer("conv9_1", 1, 128, 1, 0, False),
    ExtraLayer("conv9_2", 3, 256, 2, 1, True),
    ExtraLayer("conv10_1", 1, 128, 1, 0, False),
    ExtraLayer("conv10_2", 3, 256, 1, 0, True),
    ExtraLayer("conv11_1", 1, 128, 1, 0, False),
    ExtraLayer("conv11_2", 3, 256, 1, 0, True),
)
_EXTRAS_512 = (
    ExtraLayer("conv8_1", 1, 256, 1, 0, False),
    ExtraLayer("conv8_2", 3, 512, 2, 1, True),
    ExtraLayer("conv9_1", 1, 128, 1, 0, False),
    ExtraLayer("conv9_2", 3, 256, 2, 1, True),
    ExtraLayer("conv10_1", 1, 128, 1, 0, False),
    ExtraLayer("conv10_2", 3, 256, 2, 1, True),
    ExtraLayer("conv11_1", 1, 128, 1, 0, False),
    ExtraLayer("conv11_2", 3, 256, 2, 1, True),
    ExtraLayer("conv12_1", 1, 128, 1, 0, False),
    ExtraLayer("conv12_2", 4, 256, 1, 1, True),  # 2 -> 1, which 'same' padding cannot express
)


# --- SSDLite-MobileNetV2 geometry ----------------------------------------------------------

# MobileNetV2's body (paper Table 2): expansion t, output channels c, repeats n, first stride s,
# after the initial 3x3/s2 convolution. Only the strides are used here (map sizes); Keras builds
# the layers.
MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_FIRST_SOURCE_STAGE = 5  # the 160-channel stage: the source is its first block's expansion
SSDLITE_EXTRA_CHANNELS = (512, 256, 256, 128)
MIN_INPUT_SIZE = 32  # keras.applications.MobileNetV2's smallest input


def _same_stride2(size: int) -> int:
    return -(-size // 2)


def ssdlite_feature_map_sizes(input_size: int,
                              num_extra_layers: int = len(SSDLITE_EXTRA_CHANNELS)) -> list[int]:
    """Side lengths of SSDLite-MobileNetV2's source maps for a square input: 320 -> [20, 10, 5,
    3, 2, 1]. Every stride-2 layer pads 'same', which turns n into ceil(n / 2)."""
    if input_size < MIN_INPUT_SIZE:
        raise ValueError(f"input size {input_size}: SSDLite-MobileNetV2 needs at least "
                         f"{MIN_INPUT_SIZE} pixels (keras.applications.MobileNetV2's minimum)")
    strides_before_first = [2] + [s for _, _, _, s in MOBILENET_V2_BLOCKS[:_FIRST_SOURCE_STAGE]]
    size = input_size
    for stride in strides_before_first:
        if stride == 2:
            size = _same_stride2(size)
    sizes = [size]
    size = _same_stride2(size)  # the 160-channel stage's stride 2; later layers keep the size
    sizes.append(size)
    for _ in range(num_extra_layers):
        size = _same_stride2(size)
        sizes.append(size)
    return sizes


def _even_steps(input_size: int, map_sizes: list[int]) -> tuple[float, ...]:
    """The TF Object Detection API spreads each map's anchor centres evenly over the image:
    the step is the input size over the map size (320 / 3 on the 3x3 map)."""
    return tuple(input_size / size for size in map_sizes)


def _ssdlite(name: str, input_size: int) -> Architecture:
    return Architecture(
        name, MOBILENET_V2, input_size,
        steps=_even_steps(input_size, ssdlite_feature_map_sizes(input_size)),
        ratio_3_layers=(True,) * (2 + len(SSDLITE_EXTRA_CHANNELS)),
        extra_channels=SSDLITE_EXTRA_CHANNELS)


ARCHITECTURES = {
    "ssd300": Architecture("ssd300", VGG16, 300,
                           steps=(8.0, 16.0, 32.0, 64.0, 100.0, 300.0),
                           ratio_3_layers=(False, True, True, True, False, False),
                           extra_layers=_EXTRAS_300),
    "ssd512": Architecture("ssd512", VGG16, 512,
                           steps=(8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0),
                           ratio_3_layers=(False, True, True, True, True, False, False),
                           extra_layers=_EXTRAS_512),
    # the MobileNetV2 paper's SSDLite (maps 20, 10, 5, 3, 2, 1: 2,034 boxes with the tfod preset)
    "ssdlite320": _ssdlite("ssdlite320", 320),
    # the TF Object Detection API's ssdlite_mobilenet_v2_coco (fixed_shape_resizer 300x300;
    # maps 19, 10, 5, 3, 2, 1: 1,917 boxes)
    "ssdlite300": _ssdlite("ssdlite300", 300),
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"model.architecture: must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name]


def _ceil_pool_size(size: int) -> int:
    return -(-size // 2)


def _conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def feature_map_sizes(name: str, input_size: int) -> list[int]:
    """Side lengths of the source feature maps the network produces for a square input.

    ssd300 at 300 gives [38, 19, 10, 5, 3, 1]; ssd512 at 512 gives [64, 32, 16, 8, 4, 2, 1];
    ssdlite320 at 320 gives [20, 10, 5, 3, 2, 1]; ssdlite300 at 300 gives [19, 10, 5, 3, 2, 1].
    """
    architecture = get_architecture(name)
    if architecture.backbone == MOBILENET_V2:
        return ssdlite_feature_map_sizes(input_size, len(architecture.extra_channels))
    size = input_size
    for _ in range(POOLINGS_BEFORE_CONV4_3):
        size = _ceil_pool_size(size)
    sizes = [size]  # conv4_3
    size = _ceil_pool_size(size)  # pool4
    sizes.append(size)  # fc7
    for extra in architecture.extra_layers:
        size = _conv_output_size(size, extra.kernel, extra.stride, extra.padding)
        if size < 1:
            raise ValueError(f"input size {input_size} is too small for {name}: "
                             f"{extra.name} would have no output pixels")
        if extra.is_source:
            sizes.append(size)
    return sizes
