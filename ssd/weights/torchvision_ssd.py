"""The torchvision source of the weight importer: `torchvision.models.detection.ssd300_vgg16`.

Reads a torchvision SSD300-VGG16 state_dict (`SSD300_VGG16_Weights.COCO_V1`, the file
ssd300_vgg16_coco-b556d3b4.pth, or one of the same architecture) with `ssd.weights.torch_format`
(no PyTorch needed) and gives a value for every variable of this project's SSD300 built from the
recipe `configs/ssd300_vgg16_torchvision_coco.json`, so that the imported network gives
torchvision's detections. What torchvision does (torchvision/models/detection/ssd.py,
anchor_utils.py, _utils.py, transform.py) and how it is carried over:

Input. torchvision takes RGB in 0..1 and normalizes with mean (0.48235, 0.45882, 0.40784) and std
  1/255, i.e. RGB 0..255 minus 255 * mean, unscaled. The recipe keeps the project's
  `caffe_bgr_mean` convention (BGR 0..255 minus `data.mean_rgb`) with mean_rgb = 255 * mean, and
  the first convolution's input channels are reversed (RGB kernel -> BGR kernel). torchvision
  resizes to 300x300 with bilinear interpolation, align_corners=False and no antialiasing, which is
  what `tf.image.resize` (bilinear) does.

Layers (state_dict key -> layer of ssd.modeling.vgg16_ssd). torchvision's backbone is VGG16's
  `features` cut at pool4: `backbone.features.{0,2,5,7,10,12,14,17,19,21}` are conv1_1 .. conv4_3
  (pool3 in ceil mode: 75 -> 38; pool1/2/4 floor mode, which on the even sizes 300, 150, 38 equals
  this project's ceil mode); `backbone.scale_weight` is conv4_3's L2-normalization scale;
  `backbone.extra.0` = pool4 (0), conv5_1 (1), conv5_2 (3), conv5_3 (5), then a Sequential (7) of
  pool5 (3x3, stride 1, pad 1), fc6 (`7.1`, 3x3, dilation 6, pad 6) and fc7 (`7.3`, 1x1);
  `backbone.extra.{1,2,3,4}.{0,2}` are conv8_1/conv8_2 .. conv11_1/conv11_2. The geometry equals
  this project's SSD300: conv8_2 and conv9_2 are 3x3 stride 2 with padding 1 on every side
  (19 -> 10 -> 5), conv10_2 and conv11_2 3x3 unpadded (5 -> 3 -> 1), pool5 pads with -inf (Keras'
  'same' max pooling ignores the pad likewise), fc6's padding 6 with dilation 6 is 'same'.
  Two numerically negligible differences: F.normalize divides by max(norm, 1e-12), this project by
  sqrt(max(norm^2, 1e-12)) (they differ only where conv4_3's channel vector has a norm < 1e-6).
  Kernels OIHW -> HWIO.

Heads. torchvision reshapes a head's (N, A*K, H, W) output to (N, H*W*A, K): channel a*K + k is
  box a, value k at a location, rows (y, x, box): this project's layout. Its per-location boxes
  (DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]], scales=[0.07, 0.15, 0.33, 0.51,
  0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])) are the square s_k, the square
  sqrt(s_k s_k+1), then per ratio r of the list (w, h) = (s_k sqrt(r), s_k / sqrt(r)) and the
  same transposed: the order of this project's "caffe" preset with ratios (1, 2, 1/2, 3, 1/3), and
  s_k * 300 = 21, 45, 99, 153, 207, 261, 315 pixels are whole, so the Caffe COCO sizes give them.
  Box values: torchvision's (dx, dy, dw, dh) with weights (10, 10, 5, 5) become this project's
  (cy, cx, h, w) with variances (0.1, 0.1, 0.2, 0.2): the regression channels are permuted.
  Clipping: torchvision's clip=True clamps each box's width and height to at most 1 before placing
  it at its centre (it does not clip boxes to the image): only the last map's 1:2 and 2:1 boxes
  (0.87 * sqrt(2) = 1.23 > 1) are affected. The recipe's anchors are unclamped (anchors.clip false,
  which would clip corners instead) and the clamp is folded into those boxes' regression outputs:
  a centre offset is multiplied by clamped/unclamped size, a log-size gets log(clamped/unclamped)
  / variance added, which decodes to exactly torchvision's boxes.
  Not carried over: torchvision clamps dw, dh at log(1000/16) before exp (a box 62x larger than
  its anchor), this project does not clamp.

Labels. torchvision's 91 outputs are background plus COCO category ids 1..90, with "N/A" at the
  10 ids COCO does not use (12, 26, 29, 30, 45, 66, 68, 69, 71, 83). The imported model has 81
  outputs: background and the 80 real categories in id order (the classification rows of the N/A
  slots are dropped), labels 1..80 named by `data.class_names` "coco", which are torchvision's names
  in the same order. Why not 91 outputs: this project's labels are contiguous and COCO ids are
  the category map's business (ssd.coco.categories): COCO evaluation requires the data's
  categories to be the model's class names label by label, and the converter of a COCO
  annotation file gives the 80 categories labels 1..80 in id order, so with 81 outputs eval.py
  writes COCO's own ids and visualize.py the right names, and an N/A slot cannot appear in a
  detection at all. The cost: softmax runs over 81 logits instead of 91, so a class's score is
  torchvision's divided by (1 - the N/A slots' probability). A trained network never saw an N/A
  target, so that probability is tiny; with random weights it is not (the comparisons against
  torchvision give the N/A rows a very negative bias first). A state_dict with another number of
  classes (a fine-tuned ssd300_vgg16) is imported with all its classes (names class_1 ...).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ssd.modeling.anchors import location_box_sizes
from ssd.weights.importing import WeightsImportError
from ssd.weights.torch_format import TorchFormatError, read_state_dict

RECIPE = "ssd300_vgg16_torchvision_coco"

# torchvision's COCO label space: 91 slots, "N/A" at the ids COCO does not use
TORCHVISION_COCO_SLOTS = 91
NA_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_IDS = tuple(i for i in range(1, TORCHVISION_COCO_SLOTS) if i not in NA_IDS)  # 80 ids

# DefaultBoxGenerator of ssd300_vgg16
ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
STEPS = (8, 16, 32, 64, 100, 300)
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # dx, dy, dw, dh
IMAGE_MEAN = (0.48235, 0.45882, 0.40784)  # RGB, on the 0..1 scale; std is 1/255

_BACKBONE = {  # layer name -> state_dict prefix
    "conv1_1": "backbone.features.0", "conv1_2": "backbone.features.2",
    "conv2_1": "backbone.features.5", "conv2_2": "backbone.features.7",
    "conv3_1": "backbone.features.10", "conv3_2": "backbone.features.12",
    "conv3_3": "backbone.features.14",
    "conv4_1": "backbone.features.17", "conv4_2": "backbone.features.19",
    "conv4_3": "backbone.features.21",
    "conv5_1": "backbone.extra.0.1", "conv5_2": "backbone.extra.0.3",
    "conv5_3": "backbone.extra.0.5",
    "fc6": "backbone.extra.0.7.1", "fc7": "backbone.extra.0.7.3",
    "conv8_1": "backbone.extra.1.0", "conv8_2": "backbone.extra.1.2",
    "conv9_1": "backbone.extra.2.0", "conv9_2": "backbone.extra.2.2",
    "conv10_1": "backbone.extra.3.0", "conv10_2": "backbone.extra.3.2",
    "conv11_1": "backbone.extra.4.0", "conv11_2": "backbone.extra.4.2",
}
_SCALE_KEY = "backbone.scale_weight"
_CLS = "head.classification_head.module_list.{}"
_REG = "head.regression_head.module_list.{}"
# this project's box values (cy, cx, h, w) taken from torchvision's (dx, dy, dw, dh)
_REG_ORDER = (1, 0, 3, 2)


def torchvision_box_sizes(layer: int, clip: bool = True) -> np.ndarray:
    """[K, 2] (height, width) of torchvision's boxes at one location of `layer`, in its order."""
    s_k, s_next = SCALES[layer], SCALES[layer + 1]
    prime = math.sqrt(s_k * s_next)
    pairs = [(s_k, s_k), (prime, prime)]  # (w, h)
    for ratio in ASPECT_RATIOS[layer]:
        root = math.sqrt(ratio)
        pairs += [(s_k * root, s_k / root), (s_k / root, s_k * root)]
    sizes = np.asarray(pairs, dtype=np.float64)[:, ::-1]  # -> (h, w)
    return np.clip(sizes, 0.0, 1.0) if clip else sizes


def _read(input_path: str) -> dict[str, np.ndarray]:
    try:
        return read_state_dict(input_path)
    except TorchFormatError as e:
        raise WeightsImportError(str(e)) from None


def describe(input_path: str) -> str:
    """One line about the file."""
    state = _read(input_path)
    count = sum(int(np.prod(v.shape)) for v in state.values())
    return (f"torchvision ssd300_vgg16 state_dict: {len(state)} tensors, {count:,} values, "
            f"{_num_classes_in(state)} classes")


def _num_classes_in(state: dict[str, np.ndarray]) -> int:
    boxes = 2 + 2 * len(ASPECT_RATIOS[0])
    key = _CLS.format(0) + ".weight"
    if key not in state:
        raise WeightsImportError(f"not a torchvision ssd300_vgg16 state_dict: no {key!r}")
    return int(state[key].shape[0]) // boxes


def default_config(input_path: str) -> tuple[str, dict[str, Any]]:
    """The recipe of torchvision's conventions, and overrides for a state_dict whose number of
    classes is not COCO's 91 (labels then keep torchvision's numbering, named class_1 ...)."""
    num_classes = _num_classes_in(_read(input_path))
    if num_classes == TORCHVISION_COCO_SLOTS:
        return RECIPE, {}
    return RECIPE, {"model.num_classes": num_classes,
                    "data.class_names": [f"class_{i}" for i in range(1, num_classes)],
                    "eval.metric": "voc07"}


def _class_slots(config, file_classes: int) -> list[int]:
    """The torchvision class slot of each of the model's outputs."""
    num_classes = config.model.num_classes
    if file_classes == TORCHVISION_COCO_SLOTS and num_classes == 1 + len(COCO_IDS):
        return [0, *COCO_IDS]
    if num_classes == file_classes:
        return list(range(num_classes))
    raise WeightsImportError(f"model.num_classes is {num_classes} but the state_dict has {file_classes} "
                     f"classes (91 imports as 81: background and the 80 COCO categories)")


def _check_config(config) -> None:
    model = config.model
    problems = []
    if model.architecture != "ssd300" or model.backbone != "vgg16" or model.input_size != 300:
        problems.append(f"model {model.architecture}/{model.backbone} at {model.input_size} "
                        f"(needs ssd300/vgg16 at 300)")
    if model.width_multiplier != 1.0 or model.extra_batch_norm:
        problems.append("width_multiplier 1 and no extra_batch_norm needed")
    if getattr(model, "extra_padding", "caffe") != "caffe":
        problems.append("model.extra_padding must be 'caffe' (torchvision pads conv8_2 and "
                        "conv9_2 by 1 on every side)")
    if config.data.preprocessing != "caffe_bgr_mean":
        problems.append(f"data.preprocessing {config.data.preprocessing!r} (needs caffe_bgr_mean)")
    if len(config.anchors.feature_map_sizes) != len(ASPECT_RATIOS):
        problems.append("anchors: needs 6 source maps")
    else:
        for layer in range(len(ASPECT_RATIOS)):
            ours = location_box_sizes(config, layer)
            theirs = torchvision_box_sizes(layer, clip=False)
            if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=1e-6, atol=1e-9):
                problems.append(f"anchors of map {layer} are not torchvision's (use the recipe "
                                f"{RECIPE})")
                break
        if [float(s) for s in config.anchors.steps] != [float(s) for s in STEPS]:
            problems.append(f"anchors.steps {config.anchors.steps} are not {list(STEPS)}")
        if config.anchors.clip or config.anchors.offset != 0.5:
            problems.append("anchors.clip must be false and anchors.offset 0.5")
    if problems:
        raise WeightsImportError("the config does not describe torchvision's ssd300_vgg16: "
                         + "; ".join(problems))


def _hwio(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(kernel, (2, 3, 1, 0)))


def _head_arrays(state, layer, slots, variances):
    """(cls kernel, cls bias, loc kernel, loc bias) of source map `layer`, HWIO."""
    cls_w, cls_b = state[_CLS.format(layer) + ".weight"], state[_CLS.format(layer) + ".bias"]
    reg_w, reg_b = state[_REG.format(layer) + ".weight"], state[_REG.format(layer) + ".bias"]
    boxes = reg_w.shape[0] // 4
    file_classes = cls_w.shape[0] // boxes
    cls_index = np.asarray([a * file_classes + s for a in range(boxes) for s in slots])
    cls_kernel = _hwio(cls_w[cls_index])
    cls_bias = cls_b[cls_index]

    # box values, with torchvision's width/height clamp folded in (module docstring)
    clamped = torchvision_box_sizes(layer, clip=True)  # (h, w)
    unclamped = torchvision_box_sizes(layer, clip=False)
    ratio = clamped / unclamped  # [K, 2]
    reg_index, scale, shift = [], [], []
    for a in range(boxes):
        r_h, r_w = ratio[a]
        # ours = torch value * scale + shift, per (cy, cx, h, w)
        factors = ((r_h / (BOX_CODER_WEIGHTS[1] * variances[0]), 0.0),
                   (r_w / (BOX_CODER_WEIGHTS[0] * variances[1]), 0.0),
                   (1.0 / (BOX_CODER_WEIGHTS[3] * variances[2]), math.log(r_h) / variances[2]),
                   (1.0 / (BOX_CODER_WEIGHTS[2] * variances[3]), math.log(r_w) / variances[3]))
        for j, (f, b) in enumerate(factors):
            reg_index.append(a * 4 + _REG_ORDER[j])
            scale.append(f)
            shift.append(b)
    reg_index = np.asarray(reg_index)
    scale = np.asarray(scale, dtype=np.float64)
    loc_kernel = _hwio((reg_w[reg_index].astype(np.float64)
                        * scale[:, None, None, None]).astype(np.float32))
    loc_bias = (reg_b[reg_index].astype(np.float64) * scale + np.asarray(shift)).astype(np.float32)
    return cls_kernel, cls_bias, loc_kernel, loc_bias


def model_arrays(input_path: str, config, model) -> tuple[dict[str, np.ndarray], list[str]]:
    """({variable.path: value} for every variable of `model`, the state_dict keys not used)."""
    _check_config(config)
    state = _read(input_path)
    used: set[str] = set()

    def take(key):
        if key not in state:
            raise WeightsImportError(f"{input_path}: no {key!r} (not a torchvision ssd300_vgg16 "
                             f"state_dict?)")
        used.add(key)
        return state[key]

    by_layer: dict[str, dict[str, np.ndarray]] = {}
    for name, prefix in _BACKBONE.items():
        kernel = _hwio(take(prefix + ".weight"))
        if name == "conv1_1":
            kernel = np.ascontiguousarray(kernel[:, :, ::-1, :])  # RGB input -> BGR input
        by_layer[name] = {"kernel": kernel, "bias": take(prefix + ".bias")}
    by_layer["conv4_3_norm"] = {"scale": take(_SCALE_KEY)}

    slots = _class_slots(config, _num_classes_in(state))
    for layer in range(len(ASPECT_RATIOS)):
        for key in (_CLS.format(layer), _REG.format(layer)):
            take(key + ".weight"), take(key + ".bias")
        cls_kernel, cls_bias, loc_kernel, loc_bias = _head_arrays(
            state, layer, slots, config.matching.variances)
        by_layer[f"cls_{layer}"] = {"kernel": cls_kernel, "bias": cls_bias}
        by_layer[f"loc_{layer}"] = {"kernel": loc_kernel, "bias": loc_bias}

    values: dict[str, np.ndarray] = {}
    for variable in model.variables:
        layer, _, field = variable.path.rpartition("/")
        value = by_layer.get(layer, {}).get(field)
        if value is None:
            raise WeightsImportError(f"no torchvision value for the model variable {variable.path!r}")
        value = np.asarray(value, dtype=np.float32)
        if tuple(value.shape) != tuple(variable.shape):
            raise WeightsImportError(f"{variable.path}: the state_dict gives shape {value.shape}, the "
                             f"model has {tuple(variable.shape)}")
        values[variable.path] = value
    unused = [key for key in state if key not in used]
    return values, unused
