"""The paper's Caffe SSD300 / SSD512 models (weiliu89/caffe, branch ssd) as a source of
`ssd.weights.importing`.

Layers with blobs, by name: conv1_1 ... conv5_3, fc6 (3x3, dilation 6), fc7, conv6_1 ... conv9_2
(SSD512: ... conv10_2), conv4_3_norm (Normalize: one blob of 512 scales, or 1 when channel
shared), and `<source>_mbox_loc` / `<source>_mbox_conf` for each source conv4_3_norm, fc7, conv6_2,
conv7_2, conv8_2, conv9_2 (SSD512: conv10_2). Layers without blobs (data, ReLU, pooling, PriorBox,
Permute, Flatten, Concat, DetectionOutput, ...) are skipped; a layer with blobs that is not mapped
is left over (an error).

Conversions to this project's conventions:
  * names: Caffe's extra layers conv6_x ... conv10_x are this project's conv8_x ... conv12_x;
  * blobs (out, in, kh, kw) -> HWIO kernels;
  * input: BGR 0..255 minus 104, 117, 123: this project's caffe_bgr_mean with
    `data.mean_rgb = [123, 117, 104]`, so conv1_1 is unchanged;
  * geometry: this project's VGG network is Caffe's (ceil-mode pooling, symmetric padding,
    `model.extra_padding = "caffe"`);
  * anchors: the `caffe` preset orders a location's priors as Caffe does (min square,
    sqrt(min * max) square, then r and 1/r per ratio: 2, 1/2, 3, 1/3) with the sizes of
    ssd_pascal.py / ssd_coco.py (the recipes' min/max sizes, truncated to whole pixels as
    PriorBox does) and no clipping; head channels are (prior, value) per location in both;
  * box encoding: Caffe's CENTER_SIZE order x, y, w, h becomes y, x, h, w (variances 0.1, 0.1,
    0.2, 0.2 either way), a permutation of the loc heads' output channels.
"""

from __future__ import annotations

import numpy as np

from ssd.weights.importing import WeightsImportError

MEAN_RGB = [123.0, 117.0, 104.0]  # Caffe subtracts 104, 117, 123 from B, G, R
_VGG = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
        for i in range(1, n + 1)] + ["fc6", "fc7"]
_NUM_EXTRA_BLOCKS = {"ssd300": 4, "ssd512": 5}
_LOC_ORDER = [1, 0, 3, 2]  # this project's (y, x, h, w) from Caffe's (x, y, w, h)
_RECIPES = {("ssd300", 21): "ssd300_voc0712", ("ssd300", 81): "ssd300_coco",
            ("ssd512", 21): "ssd512_voc0712", ("ssd512", 81): "ssd512_coco"}


def _read(input_path: str) -> dict[str, list[np.ndarray]]:
    from ssd.weights.caffe_format import read_caffemodel

    try:
        net = read_caffemodel(input_path)
    except (ValueError, OSError) as e:
        raise WeightsImportError(str(e)) from None
    layers = {}
    for layer in net.layers:
        if not layer.blobs:
            continue
        if layer.name in layers:
            raise WeightsImportError(f"{input_path}: two layers with blobs named {layer.name}")
        layers[layer.name] = [np.asarray(b, dtype=np.float32) for b in layer.blobs]
    return layers


def _extra_names(architecture: str) -> dict[str, str]:
    """Caffe extra layer -> this project's (conv6_1 -> conv8_1, ...)."""
    return {f"conv{6 + b}_{i}": f"conv{8 + b}_{i}"
            for b in range(_NUM_EXTRA_BLOCKS[architecture]) for i in (1, 2)}


def _sources(architecture: str) -> list[str]:
    return ["conv4_3_norm", "fc7"] + [f"conv{6 + b}_2"
                                      for b in range(_NUM_EXTRA_BLOCKS[architecture])]


def describe(input_path: str) -> str:
    layers = _read(input_path)
    values = sum(int(b.size) for blobs in layers.values() for b in blobs)
    return f"Caffe model {input_path}: {len(layers)} layers with blobs, {values:,} values"


def default_config(input_path: str) -> tuple[str, dict]:
    layers = _read(input_path)
    architecture = "ssd512" if "conv10_2" in layers else "ssd300"
    for name in ("conv4_3_norm_mbox_loc", "conv4_3_norm_mbox_conf", "fc7"):
        if name not in layers:
            raise WeightsImportError(f"{input_path}: no layer {name} with blobs: not an SSD "
                                     f"VGG16 model of the Caffe release")
    boxes = layers["conv4_3_norm_mbox_loc"][0].shape[0] // 4
    num_classes = layers["conv4_3_norm_mbox_conf"][0].shape[0] // max(boxes, 1)
    overrides = {
        "anchors.preset": "caffe",
        "anchors.clip": False,
        "model.extra_padding": "caffe",
        "data.preprocessing": "caffe_bgr_mean",
        "data.mean_rgb": list(MEAN_RGB),
        "eval.min_box_size": 0.0,
    }
    width = layers["fc7"][0].shape[0] / 1024.0
    if width != 1.0:
        overrides["model.width_multiplier"] = width
    recipe = _RECIPES.get((architecture, num_classes))
    if recipe is None:
        recipe = _RECIPES[(architecture, 21)]
        overrides["model.num_classes"] = num_classes
        overrides["data.class_names"] = [f"class_{i}" for i in range(1, num_classes)]
    return recipe, overrides


def _kernel(blob: np.ndarray, name: str, input_path: str) -> np.ndarray:
    if blob.ndim != 4:
        raise WeightsImportError(f"{input_path}: {name}'s weights have shape {blob.shape}, "
                                 f"not (out, in, kh, kw)")
    return np.ascontiguousarray(blob.transpose(2, 3, 1, 0))


def _loc_order(values: np.ndarray) -> np.ndarray:
    """Last axis (prior, x/y/w/h) -> (prior, y/x/h/w)."""
    shape = values.shape
    if shape[-1] % 4:
        return values  # reported as a shape mismatch
    grouped = values.reshape(shape[:-1] + (shape[-1] // 4, 4))
    return np.ascontiguousarray(grouped[..., _LOC_ORDER].reshape(shape))


def model_arrays(input_path: str, config, model) -> tuple[dict[str, np.ndarray], list[str]]:
    if config.data.preprocessing != "caffe_bgr_mean":
        raise WeightsImportError(f"data.preprocessing {config.data.preprocessing!r}: the Caffe "
                                 f"weights need caffe_bgr_mean (BGR minus the mean)")
    architecture = config.model.architecture
    if architecture not in _NUM_EXTRA_BLOCKS or config.model.extra_batch_norm:
        raise WeightsImportError(f"{input_path}: the Caffe release is SSD300/SSD512 without batch "
                                 f"norm; the config asks for {architecture}"
                                 f"{' with extra_batch_norm' if config.model.extra_batch_norm else ''}")
    layers = _read(input_path)
    convs = {name: name for name in _VGG}
    convs.update(_extra_names(architecture))
    heads = {}
    for i, source in enumerate(_sources(architecture)):
        heads[f"{source}_mbox_loc"] = (f"loc_{i}", True)
        heads[f"{source}_mbox_conf"] = (f"cls_{i}", False)
    expected = list(convs) + ["conv4_3_norm"] + list(heads)
    missing = [name for name in expected if name not in layers]
    if missing:
        raise WeightsImportError(f"{input_path}: missing layer(s) {', '.join(missing)} (an "
                                 f"{architecture} model needs them)")
    arrays, unused = {}, []

    def conv(caffe_name, layer, is_loc=False):
        blobs = layers[caffe_name]
        if len(blobs) < 2:
            raise WeightsImportError(f"{input_path}: layer {caffe_name} has {len(blobs)} blob(s), "
                                     f"expected weights and bias")
        unused.extend(f"{caffe_name} blob {k}" for k in range(2, len(blobs)))
        kernel, bias = _kernel(blobs[0], caffe_name, input_path), blobs[1].reshape(-1)
        if is_loc:
            kernel, bias = _loc_order(kernel), _loc_order(bias)
        arrays[f"{layer}/kernel"], arrays[f"{layer}/bias"] = kernel, bias

    for caffe_name, layer in convs.items():
        conv(caffe_name, layer)
    for caffe_name, (layer, is_loc) in heads.items():
        conv(caffe_name, layer, is_loc)
    norm = layers["conv4_3_norm"]
    unused.extend(f"conv4_3_norm blob {k}" for k in range(1, len(norm)))
    scale = norm[0].reshape(-1)
    if scale.size == 1:  # channel_shared: one scale for every channel
        width = tuple(model.get_layer("conv4_3_norm").scale.shape)
        scale = np.full(width, scale[0], np.float32)
    arrays["conv4_3_norm/scale"] = scale
    unused.extend(sorted(name for name in layers if name not in expected))
    return arrays, unused
