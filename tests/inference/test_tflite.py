"""TFLite export: built-in ops only, and the interpreter's detections against TensorFlow's.

The trained model: SSD300 at 1/8 width (configs/ssd300_shapes_cpu.json) trained from scratch on a
small synthetic shapes set, kept in tests/assets/shapes_ssd300_cpu/ (made by
tests/assets/make_shapes_model.py: the demo's schedule, compressed, 600 steps); it reaches about
0.8 VOC07 mAP on the test images generated here. Random weights give near-equal scores for many
boxes, and the order of near-ties is not a property of the export; a trained model's scores are
spread out.
"""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd.modeling.anchors import generate_anchors
from ssd.modeling.checkpoints import restore_checkpoint
from ssd.config.loading import load_config, load_saved_config
from ssd.inference.detector import Detector, build_inference_model
from ssd.inference.saved_model import SIGNATURE_IMAGES, export_saved_model
from ssd.modeling.postprocess import postprocess
from ssd.data.records import make_example, parse_example
from ssd.inference import tflite as te
from ssd.voc.coords import normalized_to_voc
from ssd.voc.metric import VOCEvaluator
from tests.detection_matching import assert_same_detections, detections_of

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # dataset/ holds scripts, not an installed package
    sys.path.insert(0, str(ROOT))

from dataset.convert_voc import convert_voc  # noqa: E402
from dataset.make_shapes import make_shapes_dataset  # noqa: E402
from tests.assets.shapes_model import CLASSES, NUM_TEST, NUM_TRAIN, SEED, copy_model_dir  # noqa: E402

pytestmark = pytest.mark.slow  # trains a model or starts processes




def _run(command, timeout=600):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """(config, trained model, test record files, training record files)."""
    base = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(base / "voc", NUM_TRAIN, NUM_TEST, seed=SEED)
    for split in ("trainval", "test"):
        convert_voc([base / "voc"], base / "records", f"shapes_{split}", CLASSES, splits=(split,),
                    progress_stream=io.StringIO())
    model_dir = copy_model_dir(base / "model")
    config = load_saved_config(model_dir)
    model = build_inference_model(config)
    restore_checkpoint(model, tf.train.latest_checkpoint(str(model_dir)), config)
    return (config, model, str(base / "records" / "shapes_test-*"),
            str(base / "records" / "shapes_trainval-*"))


@pytest.fixture(scope="module")
def test_images(shapes):
    """[(image id, resized uint8 [S, S, 3], height, width, gt boxes, labels, difficult)]."""
    config, _, test_files, _ = shapes
    images = []
    for record in tf.data.TFRecordDataset(tf.io.gfile.glob(test_files)):
        example = parse_example(record)
        image = tf.io.decode_image(example["encoded"], channels=3)
        images.append((example["source_id"].numpy().decode(),
                       te.resize_for_tflite(image, config.model.input_size).numpy(),
                       int(example["height"]), int(example["width"]), example["boxes"].numpy(),
                       example["labels"].numpy(), example["difficult"].numpy()))
    return images


@pytest.fixture(scope="module")
def float_model(shapes):
    config, model, _, _ = shapes
    return te.convert_to_tflite(model, config)


@pytest.fixture(scope="module")
def int8_model(shapes):
    config, model, _, train_files = shapes
    return te.convert_to_tflite(model, config, "int8", te.representative_images(train_files, config))


def _tflite_detections(content, images):
    runner = te.interpreter(content)
    return [te.detect_tflite(runner, image[np.newaxis]) for image in images]


# the trained model's detections compared between the runtimes (see _check_equal)
MIN_COMPARED_SCORE = 0.1


def _check_equal(tflite_out, reference, min_score=None):
    """Same detections, matched by class, score and box (tests/detection_matching.py)."""
    compared = assert_same_detections(
        detections_of(tflite_out, prefix="detection_"), detections_of(reference),
        box_atol=1e-4, score_atol=1e-5, max_detections=reference["scores"].shape[1], min_score=min_score,
        names=("TFLite", "TensorFlow"))
    assert compared > 0


# --- operators ---------------------------------------------------------------------------

def _foreign_ops(content):
    return [name for name in te.op_names(content) if name.startswith("Flex") or name == "CUSTOM"]


def test_models_have_builtin_operators_only(float_model, int8_model, capfd):
    for content in (float_model, int8_model):
        names = te.op_names(content)
        assert _foreign_ops(content) == []
        assert "NON_MAX_SUPPRESSION_V4" in names and "CONV_2D" in names
        capfd.readouterr()
        tf.lite.experimental.Analyzer.analyze(model_content=content)  # prints every op
        analysis = capfd.readouterr().out
        assert "NON_MAX_SUPPRESSION_V4" in analysis and "CONV_2D" in analysis
        assert "Flex" not in analysis and "CUSTOM" not in analysis


def test_flex_op_fails_the_conversion(tmp_path):
    """The converter settings are those that reject anything outside the built-ins: the combined
    NMS kernel (the TF fast path) would need the Flex delegate."""
    config = load_config("ssd300_voc0712", {"model.num_classes": 3, "data.class_names": ["a", "b"]})
    anchors = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]], np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 2, 3], tf.float32), tf.TensorSpec([1, 2, 4], tf.float32)])
    def combined(logits, encodings):
        return postprocess(logits, encodings, anchors, config, nms="combined")

    converter = tf.lite.TFLiteConverter.from_concrete_functions([combined.get_concrete_function()])
    te.configure_converter(converter, None, None, 2)
    with pytest.raises(Exception, match="CombinedNonMaxSuppression"):
        converter.convert()


def test_int8_network_runs_in_int8(int8_model):
    runner = te.interpreter(int8_model)
    tensors = {t["index"]: t for t in runner.get_tensor_details()}
    convs = [op for op in runner._get_ops_details() if op["op_name"] == "CONV_2D"]
    assert convs
    for op in convs:
        activation, weights = (tensors[i]["dtype"] for i in op["inputs"][:2])
        assert activation == np.int8 and weights == np.int8
    details = runner.get_signature_runner(te.SIGNATURE_KEY).get_input_details()
    assert details[te.INPUT_NAME]["dtype"] == np.uint8


# --- detections --------------------------------------------------------------------------

def test_float32_matches_tensorflow(shapes, test_images, float_model):
    config, model, _, _ = shapes
    detector = Detector(model, config)
    images = [image for _, image, *_ in test_images[:12]]
    for image, out in zip(images, _tflite_detections(float_model, images)):
        reference = {k: v.numpy() for k, v in detector.detect_uint8(tf.constant(image[np.newaxis])).items()}
        assert reference["num_detections"][0] > 0
        _check_equal(out, reference, min_score=MIN_COMPARED_SCORE)


def test_float32_matches_the_saved_model(shapes, test_images, float_model, tmp_path):
    """The exported SavedModel (its uint8 signature, nothing cut by its score threshold) and the
    .tflite file give the same detections for the same images."""
    config, model, _, _ = shapes
    export_saved_model(model, config, tmp_path / "saved_model", score_threshold=0.0)
    serve = tf.saved_model.load(str(tmp_path / "saved_model")).signatures[SIGNATURE_IMAGES]
    images = [image for _, image, *_ in test_images[12:24]]
    for image, out in zip(images, _tflite_detections(float_model, images)):
        served = serve(images=tf.constant(image[np.newaxis]), score_threshold=tf.constant(0.0))
        reference = {"scores": served["detection_scores"].numpy(),
                     "classes": served["detection_classes"].numpy().astype(np.int32),
                     "boxes": served["detection_boxes"].numpy(),
                     "num_detections": served["num_detections"].numpy().astype(np.int32)}
        assert reference["num_detections"][0] > 0
        _check_equal(out, reference, min_score=MIN_COMPARED_SCORE)


def test_float16_weights_close_to_float32(shapes, test_images, float_model):
    config, model, _, _ = shapes
    content = te.convert_to_tflite(model, config, "float16")
    assert len(content) < 0.6 * len(float_model)
    runner = te.interpreter(content)
    assert any(t["dtype"] == np.float16 for t in runner.get_tensor_details())
    images = [image for _, image, *_ in test_images[:4]]
    for half, full in zip(_tflite_detections(content, images), _tflite_detections(float_model, images)):
        # the best detections survive unchanged to float16 weight precision
        np.testing.assert_array_equal(half["detection_classes"][0, :3], full["detection_classes"][0, :3])
        np.testing.assert_allclose(half["detection_boxes"][0, :3], full["detection_boxes"][0, :3], atol=5e-3)
        np.testing.assert_allclose(half["detection_scores"][0, :3], full["detection_scores"][0, :3], atol=5e-3)


def _voc_map(config, test_images, detections):
    evaluator = VOCEvaluator(config.data.class_names, metric="voc07")
    for (image_id, _, height, width, gt_boxes, labels, difficult), out in zip(test_images, detections):
        n = int(out["num_detections"][0])
        det_boxes = normalized_to_voc(out["detection_boxes"][0, :n], height, width)
        evaluator.add_image(image_id, normalized_to_voc(gt_boxes, height, width), labels, difficult,
                            det_boxes, out["detection_scores"][0, :n], out["detection_classes"][0, :n])
    return evaluator.result()["mAP"]


# The difference, not each mAP, is bounded (the kept model is one of many a run could give).
# Measured on 240 test images, float32 / int8: the kept model 0.796 / 0.795; other 600-step runs
# 0.781 / 0.778, 0.782 / 0.783, 0.816 / 0.818, 0.699 / 0.697. A model far from converged makes the
# test a coin toss: after 250 steps (mAP 0.11-0.32 from run to run) the int8 loss on 80 images
# ranged from -0.005 to +0.011.
MAX_INT8_MAP_LOSS = 0.01


def test_int8_map_within_one_point_of_float32(shapes, test_images, float_model, int8_model):
    config = shapes[0]
    images = [image for _, image, *_ in test_images]
    float_map = _voc_map(config, test_images, _tflite_detections(float_model, images))
    int8_map = _voc_map(config, test_images, _tflite_detections(int8_model, images))
    print(f"VOC07 mAP on {len(images)} test images: float32 {float_map:.4f}, int8 {int8_map:.4f}")
    assert float_map > 0.5  # a model that detects (random weights: ~0): the comparison means something
    assert int8_map >= float_map - MAX_INT8_MAP_LOSS


def test_int8_detections_close_to_float32(test_images, float_model, int8_model):
    """The best float32 detections of each image are among int8's best: same class, IoU > 0.7."""
    images = [image for _, image, *_ in test_images[:20]]
    matched = total = 0
    for full, quant in zip(_tflite_detections(float_model, images), _tflite_detections(int8_model, images)):
        best = quant["detection_classes"][0, :TOP_DETECTIONS * 2], quant["detection_boxes"][0, :TOP_DETECTIONS * 2]
        for box, cls in zip(full["detection_boxes"][0, :TOP_DETECTIONS], full["detection_classes"][0, :TOP_DETECTIONS]):
            total += 1
            same = best[0] == cls
            if same.any() and _iou(box, best[1][same]).max() > 0.7:
                matched += 1
    print(f"int8 finds {matched} of the {total} best float32 detections among its {TOP_DETECTIONS * 2} best")
    assert matched >= MIN_INT8_MATCHED * total


TOP_DETECTIONS = 5
MIN_INT8_MATCHED = 0.8


def _iou(box, boxes):
    inter = (np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
             * np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None))
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def _spread_weights(model, seed=0):
    """Weights under which a network's outputs are spread out, so that detections are decided by
    their scores and not by the order of ties: fresh SSDLite weights give logits of ~1e-9 (every
    score 1/num_classes, every box a tie). Variance-preserving normal kernels everywhere, and
    final head layers giving logits of std ~2 and box encodings of ~0.5."""
    rng = np.random.default_rng(seed)
    head_gain = {"cls_head": 1.0, "box_head": 0.1}
    for layer in model.layers:
        if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D)):
            kernel = layer.weights[0]
            height, width, channels_in, _ = kernel.shape
            depthwise = isinstance(layer, tf.keras.layers.DepthwiseConv2D)
            fan_in = height * width * (1 if depthwise else channels_in)
            final_head = layer.name.endswith("_pw") and layer.name.rsplit("_", 2)[0] in head_gain
            gain = head_gain[layer.name.rsplit("_", 2)[0]] if final_head else 2.0
            kernel.assign(rng.normal(0.0, np.sqrt(gain / fan_in), kernel.shape).astype(np.float32))


def test_ssdlite_float32_matches_tensorflow():
    config = load_config("ssdlite320_shapes_cpu", {"eval.max_detections": 50})
    model = build_inference_model(config)
    _spread_weights(model)
    anchors = generate_anchors(config)
    assert len(anchors) == model.outputs[0].shape[1]
    content = te.convert_to_tflite(model, config)
    assert _foreign_ops(content) == []
    rng = np.random.default_rng(0)
    size = config.model.input_size
    images = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    for image, out in zip(images, _tflite_detections(content, images)):
        # the network's own input convention: RGB scaled to [-1, 1]
        inputs = tf.constant(image[np.newaxis], tf.float32) / 127.5 - 1.0
        logits, encodings = model(inputs, training=False)
        assert float(tf.math.reduce_std(logits)) > 0.5  # spread out: not a comparison of ties
        reference = {k: v.numpy() for k, v in postprocess(logits, encodings, anchors, config).items()}
        assert reference["num_detections"][0] == config.eval.max_detections
        _check_equal(out, reference)


def _sigmoid_ssdlite():
    config = load_config("ssdlite320_shapes_cpu", {"eval.max_detections": 50,
                                                   "loss.classification": "sigmoid"})
    model = build_inference_model(config)
    _spread_weights(model, seed=1)
    return config, model


def test_ssdlite_sigmoid_scores_float32_match_the_detector():
    """loss.classification "sigmoid": the .tflite file scores each class by its logit's sigmoid
    (LOGISTIC, no SOFTMAX) and detects what the TensorFlow Detector detects."""
    config, model = _sigmoid_ssdlite()
    content = te.convert_to_tflite(model, config)
    names = te.op_names(content)
    assert "LOGISTIC" in names and "SOFTMAX" not in names and _foreign_ops(content) == []
    detector = Detector(model, config)
    rng = np.random.default_rng(1)
    size = config.model.input_size
    images = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    for image, out in zip(images, _tflite_detections(content, images)):
        reference = {k: v.numpy() for k, v in detector.detect_uint8(tf.constant(image[np.newaxis])).items()}
        assert reference["num_detections"][0] == config.eval.max_detections
        _check_equal(out, reference)
        # sigmoid scores of logits of std ~2: the best near 1, far above a 5-way softmax's share
        logits, _ = model(tf.constant(image[np.newaxis], tf.float32) / 127.5 - 1.0, training=False)
        best = tf.reduce_max(tf.sigmoid(logits[..., 1:])).numpy()
        np.testing.assert_allclose(out["detection_scores"][0, 0], best, rtol=1e-5)


def test_int8_keeps_the_sigmoid_scores_float():
    """Like the softmax, the post-processing's sigmoid stays float32 in an int8 model (int8
    scores would come in steps of 1/256)."""
    config, model = _sigmoid_ssdlite()
    size = config.model.input_size
    calibration = list(np.random.default_rng(2).integers(0, 256, (4, size, size, 3), dtype=np.uint8))
    runner = te.interpreter(te.convert_to_tflite(model, config, "int8", calibration))
    tensors = {t["index"]: t for t in runner.get_tensor_details()}
    logistic = [op for op in runner._get_ops_details() if op["op_name"] == "LOGISTIC"]
    assert len(logistic) == 1
    assert [tensors[i]["dtype"] for i in (*logistic[0]["inputs"], *logistic[0]["outputs"])] == [np.float32] * 2
    convs = [op for op in runner._get_ops_details() if op["op_name"] == "CONV_2D"]
    assert convs and all(tensors[op["inputs"][0]]["dtype"] == np.int8 for op in convs)


# --- files and arguments -------------------------------------------------------------------

def _write_records(path, sizes):
    rng = np.random.default_rng(0)
    arrays = []
    with tf.io.TFRecordWriter(str(path)) as writer:
        for index, (height, width) in enumerate(sizes):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            arrays.append(pixels)
            writer.write(make_example(encoded=buffer.getvalue(), image_format="png", height=height,
                                      width=width, filename=f"{index}.png", source_id=str(index),
                                      boxes=[[0.1, 0.1, 0.5, 0.5]], labels=[1], texts=["circle"],
                                      difficult=[0], truncated=[0]).SerializeToString())
    return arrays


def test_representative_images_read_and_resize_records(tmp_path):
    config = load_config("ssd300_shapes_cpu")
    arrays = _write_records(tmp_path / "train-00000-of-00001", [(40, 60), (300, 300), (77, 33)])
    images = te.representative_images(str(tmp_path / "train-*"), config, count=2)
    assert len(images) == 2
    for image, array in zip(images, arrays):
        assert image.dtype == np.uint8 and image.shape == (300, 300, 3)
        expected = tf.image.resize(array.astype(np.float32), [300, 300]).numpy()
        np.testing.assert_array_equal(image, np.clip(np.round(expected), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(images[1], arrays[1])  # already the input size: unchanged
    assert len(te.representative_images(str(tmp_path / "train-*"), config, count=300)) == 3
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        te.representative_images(str(tmp_path / "nothing-here*"), config)


def test_bad_arguments_are_rejected(tmp_path):
    config = load_config("ssd300_shapes_cpu")
    model = build_inference_model(config)
    with pytest.raises(ValueError, match="quantize must be one of"):
        te.convert_to_tflite(model, config, "int4")
    with pytest.raises(ValueError, match="representative_images"):
        te.convert_to_tflite(model, config, "int8")
    with pytest.raises(ValueError, match=r"uint8 \[300, 300, 3\]"):
        te.convert_to_tflite(model, config, "int8", [np.zeros((200, 200, 3), np.uint8)])


def test_export_tflite_writes_a_loadable_file(tmp_path, shapes, float_model):
    config, model, _, _ = shapes
    path = te.export_tflite(model, config, tmp_path / "out")
    assert path == str(tmp_path / "out" / te.TFLITE_FILENAME)
    content = Path(path).read_bytes()
    runner = te.interpreter(content)
    signature = runner.get_signature_list()[te.SIGNATURE_KEY]
    assert signature["inputs"] == [te.INPUT_NAME]
    assert sorted(signature["outputs"]) == sorted(te.OUTPUT_NAMES.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["class_names.txt", "config.json",
                                                                  te.TFLITE_FILENAME]
    assert (tmp_path / "out" / "class_names.txt").read_text().split() == list(config.data.class_names)
    with pytest.raises(FileExistsError, match="--overwrite"):
        te.export_tflite(model, config, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left aside


def test_export_app_writes_tflite_models_that_detect_like_the_library(shapes, test_images, float_model,
                                                                      tmp_path):
    config, _, _, train_files = shapes
    model_dir = Path(train_files).parent.parent / "model"
    export_dir = tmp_path / "tflite"
    command = [sys.executable, "export.py", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
               "--format=tflite"]
    _run(command)
    exported = (export_dir / te.TFLITE_FILENAME).read_bytes()
    info = json.loads((export_dir / "export.json").read_text())  # what eval.py --exported_model reports
    assert info == {"checkpoint": str(model_dir / "ckpt-600"), "step": 600, "format": "tflite", "quantize": None}
    images = [image for _, image, *_ in test_images[:3]]
    for ours, library in zip(_tflite_detections(exported, images), _tflite_detections(float_model, images)):
        for name in te.OUTPUT_NAMES.values():
            np.testing.assert_array_equal(ours[name], library[name])
    int8_dir = tmp_path / "int8"
    _run(command[:-2] + [f"--export_dir={int8_dir}", "--format=tflite", "--quantize=int8",
                         f"--calibration_data={train_files}", "--calibration_images=20"])
    details = te.interpreter((int8_dir / te.TFLITE_FILENAME).read_bytes()).get_tensor_details()
    assert json.loads((int8_dir / "export.json").read_text())["quantize"] == "int8"
    assert any(d["dtype"] == np.int8 for d in details)
    refused = subprocess.run(command[:-1] + ["--quantize=int8"], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "--quantize goes with --format=tflite" in refused.stderr


# --- fine-tuning the trained model to a subset of its classes (ssd.engine.fine_tune) -------------

SUBSET = ["star", "circle"]  # two of CLASSES, reordered
# The fine-tuned model's logits are exactly the source's background, star and circle logits, but
# its softmax runs over those 3 instead of 5: a box on a square or triangle, where the source put
# most of the mass on the dropped class, now gives it to star, circle or background, and some of
# those boxes become confident false positives of the kept classes. Measured on 240 test images,
# VOC07 AP source / fine-tuned at step 0: the kept model star 0.862 / 0.795, circle 0.868 / 0.773;
# another run star 0.860 / 0.787, circle 0.891 / 0.814 (boxes scoring > 0.3 for a kept class on 8 images: 198 -> 254, 62 of them argmax a
# dropped class in the source). Bounded with a margin for runs that train differently.
MAX_SUBSET_AP_LOSS = 0.15


def _per_class_ap(detector, config, test_images, label_map):
    """VOC07 AP per class of `config` on the test images, their ground truth relabelled by
    `label_map` (record label -> config label; other classes' objects dropped)."""
    evaluator = VOCEvaluator(config.data.class_names, metric="voc07")
    for start in range(0, len(test_images), 16):
        chunk = test_images[start:start + 16]
        batch = tf.constant(np.stack([image for _, image, *_ in chunk]))
        out = {k: v.numpy() for k, v in detector.detect_uint8(batch).items()
               if k in ("boxes", "scores", "classes", "num_detections")}
        for i, (image_id, _, height, width, gt_boxes, labels, difficult) in enumerate(chunk):
            keep = np.isin(labels, list(label_map))
            n = int(out["num_detections"][i])
            evaluator.add_image(image_id, normalized_to_voc(gt_boxes[keep], height, width),
                                np.array([label_map[int(l)] for l in labels[keep]], np.int64),
                                difficult[keep], normalized_to_voc(out["boxes"][i, :n], height, width),
                                out["scores"][i, :n], out["classes"][i, :n])
    return evaluator.result()["classes"]


def test_fine_tuned_to_a_class_subset_scores_like_the_source_at_step_0(shapes, test_images):
    from ssd.config.loading import from_dict, to_dict
    from ssd.engine.fine_tune import initialize_from_checkpoint
    from ssd.inference.detector import preprocess_uint8

    config, model, test_files, _ = shapes
    model_dir = Path(test_files).parents[1] / "model"  # where the fixture trained
    values = to_dict(config)
    values["data"]["class_names"] = SUBSET
    values["model"]["num_classes"] = len(SUBSET) + 1
    subset_config = from_dict(values)
    subset_model = build_inference_model(subset_config)
    report = initialize_from_checkpoint(subset_model, subset_config, str(model_dir))
    assert report.copied_classes == [("background", "background"), ("star", "star"), ("circle", "circle")]

    labels = {name: CLASSES.index(name) + 1 for name in CLASSES}
    source_ap = _per_class_ap(Detector(model, config), config, test_images,
                              {label: label for label in labels.values()})
    subset_ap = _per_class_ap(Detector(subset_model, subset_config), subset_config, test_images,
                              {labels[name]: i for i, name in enumerate(SUBSET, start=1)})
    print("VOC07 AP on %d test images, source (4 classes) / fine-tuned to %s at step 0: %s" % (
        len(test_images), SUBSET, ", ".join(f"{c} {source_ap[c]:.4f} / {subset_ap[c]:.4f}" for c in SUBSET)))
    images = tf.constant(np.stack([image for _, image, *_ in test_images[:8]]))
    inputs, _ = preprocess_uint8(images, config)
    np.testing.assert_array_equal(subset_model(inputs)[0].numpy(),
                                  tf.gather(model(inputs)[0], [0, labels["star"], labels["circle"]], axis=-1))
    for name in SUBSET:
        assert source_ap[name] > 0.5  # a model that detects: the comparison means something
        assert subset_ap[name] >= source_ap[name] - MAX_SUBSET_AP_LOSS, name
