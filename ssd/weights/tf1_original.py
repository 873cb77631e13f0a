"""The TF1 original's SSD300 checkpoint (HiKapok/SSD.TensorFlow) as a source of `ssd.weights.importing`.

Its variables (scope `ssd300`, written by `tf.train.Saver`; kernels HWIO like Keras'):
  conv1/conv1_1 ... conv5/conv5_3, fc6, fc7                  kernel, bias
  conv4_3_scale/weights                                       [512] L2-normalization scale
  additional_layers/conv8/conv8_1 ... conv11/conv11_2         kernel, bias
  multibox_head/loc_{0..5}, cls_{0..5}                        kernel, bias
beside `global_step` and the Momentum slots (`<variable>/Momentum`), which are ignored; every
other tensor must be used.

Conversions to this project's conventions:
  * input: the TF1 net takes RGB minus (123.68, 116.78, 103.94); this project feeds BGR minus the
    same mean (caffe_bgr_mean), so conv1_1's kernel gets its input channels reversed;
  * padding: TF1 pads every convolution 'same'; conv9_2 (3x3 stride 2 on 10x10) then pads only
    bottom/right, where this project's default pads Caffe's one pixel all round: the config gets
    `model.extra_padding = "same"` (the other layers' padding is the same either way);
  * anchors: both lay the head channels out as (box, value) per location and order a location's
    boxes the same way (the extra square, then the ratios in the listed order), the `tf1` preset;
    the ratio lists are taken as the checkpoint's recipe wrote them (1, 2, .5 / 1, 2, 3, .5,
    .3333; older commits without the 1, detected from the head widths);
  * box encoding: [cy, cx, h, w] over prior scaling 0.1, 0.1, 0.2, 0.2, this project's order and
    variances: no change;
  * evaluation: its filter of boxes under 0.03 of the image (`eval.min_box_size`).
"""

from __future__ import annotations

import numpy as np

from ssd.weights.importing import WeightsImportError

SCOPE = "ssd300"
MEAN_RGB = [123.68, 116.78, 103.94]
NUM_SOURCES = 6
_VGG = [f"conv{b}/conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
        for i in range(1, n + 1)]
_EXTRAS = [f"additional_layers/conv{b}/conv{b}_{i}" for b in (8, 9, 10, 11) for i in (1, 2)]
# the released train_ssd.py's anchor_ratios; older commits lack the 1 (6,792 boxes)
_RATIOS = {
    (4, 6, 6, 6, 4, 4): [[1.0, 2.0, 0.5]] + [[1.0, 2.0, 3.0, 0.5, 0.3333]] * 3 + [[1.0, 2.0, 0.5]] * 2,
    (3, 5, 5, 5, 3, 3): [[2.0, 0.5]] + [[2.0, 3.0, 0.5, 0.3333]] * 3 + [[2.0, 0.5]] * 2,
}


def _ignored(name: str) -> bool:
    return name == "global_step" or name.endswith("/Momentum")


def _layer_map() -> dict[str, str]:
    """TF1 layer scope (under ssd300/) -> this project's layer name."""
    mapping = {path: path.rsplit("/", 1)[-1] for path in _VGG + _EXTRAS}
    mapping.update(fc6="fc6", fc7="fc7")
    for i in range(NUM_SOURCES):
        mapping[f"multibox_head/loc_{i}"] = f"loc_{i}"
        mapping[f"multibox_head/cls_{i}"] = f"cls_{i}"
    return mapping


class _Reader:
    """The checkpoint's tensors by name, with read errors turned into WeightsImportError."""

    def __init__(self, path: str):
        import tensorflow as tf

        self.path = path
        try:
            self._reader = tf.train.load_checkpoint(path)
            self.shapes = self._reader.get_variable_to_shape_map()
        except (tf.errors.OpError, ValueError, IndexError) as e:
            raise WeightsImportError(f"{path}: not a readable TensorFlow checkpoint "
                                     f"({_first_line(e)})") from None
        if not any(name.startswith(SCOPE + "/") for name in self.shapes):
            raise WeightsImportError(f"{path}: no variable under the scope {SCOPE}/: not a "
                                     f"checkpoint of the TF1 original's SSD300")

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise WeightsImportError(f"{self.path}: no variable {name}")
        return tuple(self.shapes[name])

    def get(self, name: str) -> np.ndarray:
        import tensorflow as tf

        self.shape(name)
        try:
            return np.asarray(self._reader.get_tensor(name), dtype=np.float32)
        except (tf.errors.OpError, IndexError, ValueError) as e:
            raise WeightsImportError(f"{self.path}: cannot read {name}, the file is damaged or "
                                     f"truncated ({_first_line(e)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe(input_path: str) -> str:
    reader = _Reader(input_path)
    used = [n for n in reader.shapes if not _ignored(n)]
    return (f"TF1 checkpoint {input_path}: {len(used)} variables under {SCOPE}/ "
            f"(+{len(reader.shapes) - len(used)} optimizer slots / global_step, ignored)")


def default_config(input_path: str) -> tuple[str, dict]:
    reader = _Reader(input_path)
    boxes = tuple(reader.shape(f"{SCOPE}/multibox_head/loc_{i}/kernel")[-1] // 4
                  for i in range(NUM_SOURCES))
    cls_width = reader.shape(f"{SCOPE}/multibox_head/cls_0/kernel")[-1]
    if boxes not in _RATIOS or cls_width % boxes[0]:
        raise WeightsImportError(f"{input_path}: heads of {boxes} boxes per location (classes "
                                 f"{cls_width} / {boxes[0]}): not an SSD300 of the TF1 original")
    num_classes = cls_width // boxes[0]
    overrides = {
        "anchors.preset": "tf1",
        "anchors.aspect_ratios": _RATIOS[boxes],
        "model.extra_padding": "same",
        "data.preprocessing": "caffe_bgr_mean",
        "data.mean_rgb": list(MEAN_RGB),
        "eval.min_box_size": 0.03,
    }
    width = reader.shape(f"{SCOPE}/fc7/kernel")[-1] / 1024.0
    if width != 1.0:
        overrides["model.width_multiplier"] = width
    if num_classes != 21:
        overrides["model.num_classes"] = num_classes
        overrides["data.class_names"] = [f"class_{i}" for i in range(1, num_classes)]
    return "ssd300_voc0712", overrides


def model_arrays(input_path: str, config, model) -> tuple[dict[str, np.ndarray], list[str]]:
    if config.data.preprocessing != "caffe_bgr_mean":
        raise WeightsImportError(f"data.preprocessing {config.data.preprocessing!r}: the TF1 "
                                 f"weights need caffe_bgr_mean (BGR minus the mean)")
    if config.model.architecture != "ssd300" or config.model.extra_batch_norm:
        raise WeightsImportError(f"{input_path}: the TF1 original is SSD300 without batch norm; "
                                 f"the config asks for {config.model.architecture}"
                                 f"{' with extra_batch_norm' if config.model.extra_batch_norm else ''}")
    reader = _Reader(input_path)
    wanted = {}
    for tf1_layer, layer in _layer_map().items():
        for part in ("kernel", "bias"):
            wanted[f"{SCOPE}/{tf1_layer}/{part}"] = f"{layer}/{part}"
    wanted[f"{SCOPE}/conv4_3_scale/weights"] = "conv4_3_norm/scale"
    missing = [name for name in wanted if name not in reader.shapes]
    if missing:
        raise WeightsImportError(f"{input_path}: missing variable(s) "
                                 f"{', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
    arrays = {}
    for name, path in wanted.items():
        value = reader.get(name)
        if path == "conv1_1/kernel":
            value = value[:, :, ::-1, :]  # RGB input channels -> BGR
        arrays[path] = np.ascontiguousarray(value)
    unused = sorted(n for n in reader.shapes if n not in wanted and not _ignored(n))
    return arrays, unused
