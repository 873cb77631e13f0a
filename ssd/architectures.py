"""The facts of each SSD architecture, stated once: input size, extra layers, steps, box layout.

Everything else is derived from this table: the source feature map sizes (by running the layer
geometry below), the anchor presets' defaults (`ssd.config`), the validation of a config
(`ssd.config_validation`) and the network itself (`ssd.model`). Pure Python: loading a config
needs neither TensorFlow nor Keras.

Source maps, in head order: conv4_3, fc7, then every extra layer marked `is_source`.
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


@dataclass(frozen=True)
class Architecture:
    name: str
    input_size: int  # square inputs of this side, in pixels
    extra_layers: tuple[ExtraLayer, ...]
    steps: tuple[float, ...]  # pixels between anchor centres, one per source map
    # per source map: whether the default boxes use the ratios 3 and 1/3 too (six boxes per
    # location instead of four)
    ratio_3_layers: tuple[bool, ...]

    @property
    def num_sources(self) -> int:
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

ARCHITECTURES = {
    "ssd300": Architecture("ssd300", 300, _EXTRAS_300,
                           steps=(8.0, 16.0, 32.0, 64.0, 100.0, 300.0),
                           ratio_3_layers=(False, True, True, True, False, False)),
    "ssd512": Architecture("ssd512", 512, _EXTRAS_512,
                           steps=(8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0),
                           ratio_3_layers=(False, True, True, True, True, False, False)),
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

    ssd300 at 300 gives [38, 19, 10, 5, 3, 1]; ssd512 at 512 gives [64, 32, 16, 8, 4, 2, 1].
    """
    size = input_size
    for _ in range(POOLINGS_BEFORE_CONV4_3):
        size = _ceil_pool_size(size)
    sizes = [size]  # conv4_3
    size = _ceil_pool_size(size)  # pool4
    sizes.append(size)  # fc7
    for extra in get_architecture(name).extra_layers:
        size = _conv_output_size(size, extra.kernel, extra.stride, extra.padding)
        if size < 1:
            raise ValueError(f"input size {input_size} is too small for {name}: "
                             f"{extra.name} would have no output pixels")
        if extra.is_source:
            sizes.append(size)
    return sizes
