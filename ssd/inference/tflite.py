"""TensorFlow Lite export: uint8 images in, detections out, post-processing inside, built-ins only.

`convert_to_tflite(model, config, quantize)` returns the bytes of a .tflite model with one
signature, "serving_default":

  input   images             uint8   [1, S, S, 3]  RGB, already resized to S = model.input_size
  outputs detection_boxes    float32 [1, K, 4]     normalized ymin, xmin, ymax, xmax
          detection_classes  int32   [1, K]        1-based labels (0 on padding)
          detection_scores   float32 [1, K]
          num_detections     int32   [1]

K = eval.max_detections; rows past num_detections are padding (score 0, class 0, zero box). Output
names are the SavedModel's (its classes and counts are float32, here int32); boxes are
normalized, so pixel boxes are the caller's `boxes * (H, W, H, W)` of its original image. The
tensors carry the signature's names too (`get_input_details()` / `get_output_details()` say
"images", "detection_boxes", ..., not the converter's "serving_default_images:0",
"PartitionedCall:0"), for tools that list tensors rather than signatures.

Why the caller resizes: a TFLite model has fixed tensor shapes, and an input of any size would
make every tensor after it dynamic (resized at each call, slower on the phone, and unsupported by
most delegates). The app or the phone's camera pipeline resizes to S x S (bilinear, as
`resize_for_tflite` does); the model then applies the rest of the inference preprocessing
(ssd.data.preprocessing: mean, BGR) itself, so it consumes camera-style uint8 RGB directly.

Inside: the preprocessing, the network and `ssd.modeling.postprocess.postprocess(..., nms="per_class")`,
whose ops are all TFLite built-ins. The converter is allowed built-ins only (no SELECT_TF_OPS),
so anything that would need the Flex delegate fails the conversion instead of producing a model
that needs the full TensorFlow runtime on the phone; `check_builtin_only` verifies the result.

Quantization:
  None       float32 weights and activations;
  "float16"  float16 weights (half the file), dequantized to float32 at load; float32 compute;
  "int8"     full-integer network: int8 weights and int8 activations (preprocessing included),
             calibrated on `representative_images` (a few hundred training images, see
             `representative_images`). The post-processing stays float32: NMS has no int8 kernel,
             and int8 softmax or sigmoid scores (steps of 1/256) or box coordinates would change
             which boxes pass the 0.01 threshold and how close scores rank. TFLITE_BUILTINS listed
             after the int8 set allows those float kernels; `_quantize_network_only` keeps the
             quantizer off them. The uint8 input and the outputs keep their types.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python.convert import mlir_quantize
from tensorflow.lite.tools import flatbuffer_utils
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from ssd.data import records
from ssd.modeling.anchors import generate_anchors
from ssd.config.loading import Config
from ssd.inference.saved_model import directory_written_aside, write_descriptions, write_export_info
from ssd.modeling.postprocess import postprocess
from ssd.data.preprocessing import decode_image, preprocess_image
from ssd.data.record_files import DataError, check_record_files, first_line, resolve_files

QUANTIZATIONS = (None, "float16", "int8")
SIGNATURE_KEY = "serving_default"
TFLITE_FILENAME = "model.tflite"
INPUT_NAME = "images"
# library detection key -> output name in the TFLite signature (the SavedModel's names)
OUTPUT_NAMES = {
    "boxes": "detection_boxes",
    "classes": "detection_classes",
    "scores": "detection_scores",
    "num_detections": "num_detections",
}
DEFAULT_CALIBRATION_IMAGES = 300
POSTPROCESS_SCOPE = "postprocess"
# op types of the post-processing that the networks (VGG16, MobileNetV2) do not use: kept float by
# type as well, as the quantizer requantizes some outputs of the denylisted nodes (multi-output
# ops, the softmax). A network that used them would run those layers in float: slower, not wrong.
POSTPROCESSING_OPS = ["SOFTMAX", "LOGISTIC", "TOPK_V2", "GATHER", "SELECT_V2", "STRIDED_SLICE", "UNPACK",
                      "PACK", "EXP", "MINIMUM", "MAXIMUM", "TRANSPOSE", "ONE_HOT", "REDUCE_MAX"]



def resize_for_tflite(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 RGB [H, W, 3] -> uint8 [size, size, 3]: the bilinear resize the app does before
    the model (rounded to the nearest integer)."""
    resized = tf.image.resize(tf.cast(image, tf.float32), [size, size])
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def detection_function(model: keras.Model, config: Config):
    """The concrete function that is converted: uint8 [1, S, S, 3] -> the outputs named above.

    The config gives the default boxes and the input convention (ssd.data.preprocessing).
    """
    size = config.model.input_size
    anchors = tf.constant(generate_anchors(config), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name=INPUT_NAME)])
    def detect(images):
        cls_logits, box_encodings = model(preprocess_image(images, config), training=False)
        with tf.name_scope(POSTPROCESS_SCOPE):  # names the ops int8 quantization leaves float
            detections = postprocess(cls_logits, box_encodings, anchors, config, nms="per_class")
        return {name: detections[key] for key, name in OUTPUT_NAMES.items()}

    return detect.get_concrete_function()


def _representative_dataset(images: Iterable[np.ndarray], size: int) -> Callable[[], Iterator]:
    def generate():
        count = 0
        for image in images:
            array = np.asarray(image)
            if array.shape != (size, size, 3) or array.dtype != np.uint8:
                raise ValueError(f"representative images must be uint8 [{size}, {size}, 3] (resized "
                                 f"like resize_for_tflite), got {array.dtype} {array.shape}")
            count += 1
            yield [array[np.newaxis]]
        if count == 0:
            raise ValueError("int8 quantization: representative_images is empty")
    return generate


def _converter(function, directory: str) -> tf.lite.TFLiteConverter:
    """A converter for `function` with its weights frozen into constants.

    Left to the converter, Keras 3's variables stay TFLite variables that nothing initializes
    (reading them fails at run time). Freezing the function by hand loses its output names, so
    the frozen graph is wrapped again under the signature's names and converted from a
    SavedModel (in `directory`, read when the converter runs), the converter's path that
    keeps them.
    """
    frozen = convert_variables_to_constants_v2(function)
    flat_names = tf.nest.flatten({name: name for name in OUTPUT_NAMES.values()})

    @tf.function(input_signature=function.structured_input_signature[0])
    def serve(images):
        return dict(zip(flat_names, tf.nest.flatten(frozen(images))))

    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, directory, signatures={SIGNATURE_KEY: serve.get_concrete_function()})
    return tf.lite.TFLiteConverter.from_saved_model(directory, [SIGNATURE_KEY])


def convert_to_tflite(model: keras.Model, config: Config, quantize: str | None = None,
                      representative_images: Iterable[np.ndarray] | None = None,
                      ) -> bytes:
    """The .tflite model (module docstring) of `model` with its current weights, as bytes.

    `representative_images` (uint8 [S, S, 3] arrays, e.g. from `representative_images`) is
    required for "int8" and ignored otherwise. Raises ValueError for an unknown `quantize`;
    the converter's error (naming the op) when an op is not a built-in.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    if quantize == "int8" and representative_images is None:
        raise ValueError("int8 quantization needs representative_images to calibrate the "
                         "activation ranges (a few hundred training images)")
    function = detection_function(model, config)
    directory = tempfile.mkdtemp(prefix="ssd_tflite_")
    try:
        converter = _converter(function, directory)
        configure_converter(converter, quantize, representative_images, config.model.input_size)
        content = _quantize_network_only(converter) if quantize == "int8" else converter.convert()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    check_builtin_only(content)
    return name_signature_tensors(content)


def name_signature_tensors(content: bytes) -> bytes:
    """The model with each signature input and output tensor renamed to its signature name.

    The converter names them after the graph it converted ("serving_default_images:0",
    "PartitionedCall:0".."PartitionedCall:3"); only the signature maps the meaningful names
    to them. Renaming changes no computation: signatures refer to tensors by index.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    for signature in model.signatureDefs:
        tensors = model.subgraphs[signature.subgraphIndex].tensors
        for entry in list(signature.inputs) + list(signature.outputs):
            tensors[entry.tensorIndex].name = entry.name
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def configure_converter(converter: tf.lite.TFLiteConverter, quantize: str | None,
               representative_images: Iterable[np.ndarray] | None, size: int) -> None:
    """Built-in ops only (no SELECT_TF_OPS: a Flex op fails the conversion), and `quantize`."""
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(representative_images, size)
        # int8 kernels wherever they exist, float built-ins for the rest (post-processing)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]


def _quantize_network_only(converter: tf.lite.TFLiteConverter) -> bytes:
    """Full-integer quantization of the network, float post-processing.

    Left to itself, the quantizer also gives int8 kernels to the post-processing ops that have
    one: the softmax's scores come out in steps of 1/256 (the 0.01 threshold and the ranking of
    close scores are lost) and the decoded boxes in steps of their tensor's range. So the model is
    calibrated first, then quantized with every op under POSTPROCESS_SCOPE denylisted (kept
    float, with a dequantize where the network's int8 outputs enter them).
    """
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    names = [tensor["name"] for tensor in interpreter(calibrated).get_tensor_details()]
    postprocessing = [name for name in names if name.startswith(POSTPROCESS_SCOPE + "/")]
    if not postprocessing:
        raise AssertionError(f"no tensor named {POSTPROCESS_SCOPE}/...: the name scope was lost")
    return mlir_quantize(calibrated, denylisted_ops=POSTPROCESSING_OPS, denylisted_nodes=postprocessing)


def export_tflite(model: keras.Model, config: Config, export_dir: str | os.PathLike,
                  quantize: str | None = None,
                  representative_images: Iterable[np.ndarray] | None = None,
                  overwrite: bool = False, source: Mapping[str, Any] | None = None) -> str:
    """Writes `export_dir/model.tflite` (`convert_to_tflite(...)`) with the class names and the
    config beside it, as the SavedModel export does: complete or not at all; with `source`
    ({"checkpoint", "step"} of the weights) also export.json. Returns the .tflite file's path."""
    content = convert_to_tflite(model, config, quantize, representative_images)
    with directory_written_aside(export_dir, overwrite) as directory:
        with open(os.path.join(directory, TFLITE_FILENAME), "wb") as f:
            f.write(content)
        write_descriptions(config, directory)
        if source is not None:
            write_export_info(directory, source, "tflite", quantize)
    return os.path.join(os.fspath(export_dir), TFLITE_FILENAME)


def interpreter(content: bytes, num_threads: int | None = None):
    """A TFLite interpreter for the model bytes (tf.lite's, or ai_edge_litert's where tf.lite
    has none)."""
    Interpreter = getattr(tf.lite, "Interpreter", None)
    if Interpreter is None:  # TensorFlow builds that dropped tf.lite's interpreter
        from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_content=content, num_threads=num_threads)


def op_names(content: bytes) -> list[str]:
    """The names of the operators the model runs, one per node, in execution order."""
    runner = interpreter(content)
    return [op["op_name"] for op in runner._get_ops_details()]


def check_builtin_only(content: bytes) -> None:
    """Raises ValueError naming them when the model has Flex (TensorFlow) or custom operators."""
    foreign = sorted({name for name in op_names(content)
                      if name.startswith("Flex") or name in ("CUSTOM", "DELEGATE")})
    if foreign:
        raise ValueError(f"the TFLite model needs operators that are not built-ins: {foreign}")


def detect_tflite(runner, images: np.ndarray) -> dict[str, np.ndarray]:
    """Runs the serving signature on uint8 [1, S, S, 3] -> {output name: array}."""
    return runner.get_signature_runner(SIGNATURE_KEY)(**{INPUT_NAME: np.asarray(images, np.uint8)})


def representative_images(files: str | os.PathLike | Sequence[str | os.PathLike], config: Config,
                          count: int = DEFAULT_CALIBRATION_IMAGES) -> list[np.ndarray]:
    """The first `count` images of TFRecord `files` (a glob, directory or list, as the data
    pipeline takes them), decoded and resized like inference (`resize_for_tflite`): uint8
    [S, S, 3] arrays for int8 calibration. Fewer when the files hold fewer images. A file that is
    no TFRecord file of image examples, or a record that cannot be read, raises DataError naming
    the file(s)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    size = config.model.input_size
    paths = [f.path for f in check_record_files(resolve_files(files))]
    dataset = tf.data.TFRecordDataset(paths).take(count)
    dataset = dataset.map(lambda record: resize_for_tflite(
        decode_image(records.parse_example(record)["encoded"]), size))
    try:
        return [image.numpy() for image in dataset]
    except tf.errors.OpError as e:
        named = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        raise DataError(f"{named}: calibration images cannot be read ({first_line(e)})") from None
