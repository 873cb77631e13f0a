"""Evaluation of checkpoints (ssd.engine.evaluation) and the eval.py app: numbers, reports, errors, --watch."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

from ssd.modeling import checkpoints

from ssd.data.record_files import DataError, resolve_record_files
from ssd.engine import checkpoint_evaluation, evaluation, evaluation_reports
from ssd.engine.evaluation_pictures import EVAL_IMAGES, evaluation_pictures
from ssd.engine.evaluators import DETECTIONS_FILENAME, GROUND_TRUTH_FILENAME, VOCMetric
from ssd.modeling.anchors import generate_anchors
from ssd.config.loading import load_config, save_config
from ssd.draw import class_colors
from ssd.data.input_fn import make_input_fn
from ssd.inference.detector import build_inference_model
from ssd.engine.estimator import ModelContext
from ssd.engine.model_fn import SSDModelFn
from ssd.modes import ModeKeys
from ssd.modeling.postprocess import postprocess
from ssd.data.records import make_example
from ssd.voc.eval import evaluate_files
from ssd.voc.results import read_result_file

pytestmark = pytest.mark.slow  # trains a model or starts processes


REPO = Path(__file__).resolve().parents[2]
CLASS_NAMES = ["circle", "square", "triangle"]

# Five test images: (height, width, [(VOC xmin, ymin, xmax, ymax), label, difficult] ...)
IMAGES = [
    (60, 80, [((11, 6, 40, 30), 1, 0), ((45, 31, 80, 60), 2, 0)]),
    (50, 50, [((1, 1, 25, 25), 1, 0)]),
    (70, 40, [((5, 10, 30, 40), 1, 1), ((10, 41, 40, 70), 3, 0)]),
    (40, 90, [((20, 5, 70, 35), 2, 0)]),
    (45, 45, []),
]


def tiny_config(**overrides):
    values = {"model.width_multiplier": 0.125, "model.num_classes": 4, "data.class_names": CLASS_NAMES,
              "eval.batch_size": 2, "train.max_steps": 2}
    values.update(overrides)
    return load_config("ssd300_voc0712", values)


def save_trainer_checkpoint(config, model_dir, step, seed):
    """A checkpoint laid out as the Estimator saves it: Checkpoint(model, global_step, optimizer)."""
    tf.keras.utils.set_random_seed(seed)
    global_step = tf.Variable(step, dtype=tf.int64, trainable=False, name="global_step")
    holder = SSDModelFn(config, ModelContext(global_step, 1))
    holder.optimizer.build(holder.model.trainable_variables)
    items = checkpoints.training_items(holder.model, global_step, holder.optimizer)
    return checkpoints.Checkpointer(items, str(model_dir), max_to_keep=5).save(step), holder.model


def _normalized(voc_box, height, width):
    xmin, ymin, xmax, ymax = voc_box
    return [(ymin - 1) / height, (xmin - 1) / width, ymax / height, xmax / width]


def _pixels(i):
    height, width, _ = IMAGES[i]
    return np.random.default_rng(i).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_records(path):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, (height, width, objects) in enumerate(IMAGES):
            buffer = io.BytesIO()
            Image.fromarray(_pixels(i)).save(buffer, format="PNG")
            example = make_example(
                encoded=buffer.getvalue(), image_format="png", height=height, width=width,
                filename=f"im{i}.png", source_id=f"im{i}",
                boxes=[_normalized(b, height, width) for b, _, _ in objects],
                labels=[label for _, label, _ in objects], texts=[CLASS_NAMES[l - 1] for _, l, _ in objects],
                difficult=[d for _, _, d in objects], truncated=[0] * len(objects))
            writer.write(example.SerializeToString())


def write_voc_annotations(directory):
    directory.mkdir()
    for i, (height, width, objects) in enumerate(IMAGES):
        parts = [f"<annotation><size><width>{width}</width><height>{height}</height></size>"]
        for (xmin, ymin, xmax, ymax), label, difficult in objects:
            parts.append(f"<object><name>{CLASS_NAMES[label - 1]}</name><difficult>{difficult}</difficult>"
                         f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
                         f"<ymax>{ymax}</ymax></bndbox></object>")
        (directory / f"im{i}.xml").write_text("".join(parts) + "</annotation>")
    imageset = directory.parent / "test.txt"
    imageset.write_text("".join(f"im{i}\n" for i in range(len(IMAGES))))
    return imageset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    data.mkdir()
    write_records(data / "test-00000-of-00001")
    config = tiny_config()
    model_dir = root / "model"
    save_config(config, model_dir)
    path, model = save_trainer_checkpoint(config, model_dir, 1, seed=5)
    return {"root": root, "data": str(data), "config": config, "model_dir": str(model_dir),
            "checkpoint": path, "model": model}


# --- the numbers ---------------------------------------------------------------------------

class _ScriptedDetector:
    """Returns prepared detections batch after batch (the EVAL pipeline keeps the file order)."""

    def __init__(self, batches):
        self.batches = list(batches)

    def __call__(self, images, original_shape):
        boxes, scores, classes = self.batches.pop(0)
        k = max(len(s) for s in scores)
        out = {"boxes": np.zeros((len(scores), k, 4), np.float32), "scores": np.zeros((len(scores), k), np.float32),
               "classes": np.zeros((len(scores), k), np.int32), "num_detections": np.zeros(len(scores), np.int32)}
        for i, (b, s, c) in enumerate(zip(boxes, scores, classes)):
            out["boxes"][i, :len(s)] = np.reshape(b, (-1, 4))
            out["scores"][i, :len(s)] = s
            out["classes"][i, :len(s)] = c
            out["num_detections"][i] = len(s)
        assert images.shape[0] == len(scores) == original_shape.shape[0]
        return {k: tf.constant(v) for k, v in out.items()}


def _scripted_detections():
    def box(i, j):
        height, width, objects = IMAGES[i]
        return _normalized(objects[j][0], height, width)

    far = [0.9, 0.9, 1.0, 1.0]  # overlaps nothing
    per_image = [
        ([box(0, 0), box(0, 1)], [0.9, 0.8], [1, 2]),        # two true positives
        ([far], [0.95], [1]),                                 # circle false positive
        ([box(2, 0), box(2, 1)], [0.7, 0.6], [1, 3]),         # difficult circle (ignored), triangle TP
        ([box(3, 0), box(3, 0)], [0.5, 0.4], [2, 2]),         # square TP and its duplicate (FP)
        ([far], [0.3], [1]),                                  # circle false positive
    ]
    batches = []
    for start in range(0, len(per_image), 2):
        chunk = per_image[start:start + 2]
        batches.append(tuple(list(x) for x in zip(*chunk)))
    return batches


@pytest.mark.parametrize("metric, circle_ap", [
    # circle: npos 2 (the difficult one is not counted); in score order FP, TP, ignored, FP:
    # recall 0, .5, .5, precision 0, .5, .33 -> 11-point: 0.5 at t = 0 .. 0.5 -> 6 * 0.5 / 11;
    # all-point: 0.5 of recall at precision 0.5 -> 0.25
    ("voc07", 6 * 0.5 / 11),
    ("voc12", 0.25),
])
def test_evaluate_scores_scripted_detections_by_hand(setup, tmp_path, metric, circle_ap):
    config = setup["config"]
    evaluator = VOCMetric(CLASS_NAMES, metric)
    dataset = make_input_fn(setup["data"], config, ModeKeys.EVAL)(None)
    stats = evaluation.evaluate(_ScriptedDetector(_scripted_detections()), dataset, evaluator,
                                num_images=5, progress_stream=io.StringIO())
    assert stats["num_images"] == 5
    result = evaluator.result()
    # square: TP, TP, duplicate FP -> precision 1 up to recall 1; triangle: one TP
    assert result["classes"]["circle"] == pytest.approx(circle_ap)
    assert result["classes"]["square"] == pytest.approx(1.0)
    assert result["classes"]["triangle"] == pytest.approx(1.0)
    assert result["mAP"] == pytest.approx((circle_ap + 2.0) / 3)
    assert evaluator.scorer.image_ids == [f"im{i}" for i in range(5)]

    summary = evaluation_reports.write_report(evaluator, result, tmp_path, step=7, checkpoint_path="ckpt-7")
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["step"] == 7 and saved["num_images"] == 5 and saved["metric"] == metric
    assert saved["num_positives"] == {"circle": 2, "square": 2, "triangle": 1}
    with Image.open(tmp_path / "precision_recall.png") as curves:
        assert curves.width > 0
    # the result files hold 1-based VOC pixels: re-scoring them against VOC XML gives the same APs
    imageset = write_voc_annotations(tmp_path / "Annotations")
    rescored = evaluate_files(tmp_path / "Annotations", imageset, tmp_path / "results", metric, CLASS_NAMES)
    assert rescored["classes"] == pytest.approx(result["classes"])
    ids, scores, boxes = read_result_file(tmp_path / "results" / "comp4_det_test_square.txt")
    assert ids == ["im0", "im3", "im3"]
    np.testing.assert_allclose(boxes[0], [45, 31, 80, 60], atol=1e-4)


# --- the COCO metric ----------------------------------------------------------------------

COCO_CATEGORY_IDS = [11, 3, 20]  # circle, square, triangle: sparse, not increasing
COCO_IMAGE_IDS = [17, 4, 250, 9, 31]
LARGE = 10000.0  # "mask area" given to every object: COCO's large range (> 96^2), boxes are small


def _coco_box(voc_box):
    """The VOC box (1-based inclusive pixels) as COCO's [x, y, width, height] of the same pixels."""
    xmin, ymin, xmax, ymax = voc_box
    return [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]


def write_coco_records(directory):
    """IMAGES as convert_coco.py writes them: COCO image ids as source ids, the difficult circle of
    image 2 a crowd region, every object's area LARGE, and the category map beside the shard."""
    from ssd.coco.categories import Category, category_map_path, write_category_map

    directory.mkdir()
    with tf.io.TFRecordWriter(str(directory / "cocotest-00000-of-00001")) as writer:
        for i, (height, width, objects) in enumerate(IMAGES):
            buffer = io.BytesIO()
            Image.fromarray(_pixels(i)).save(buffer, format="PNG")
            example = make_example(
                encoded=buffer.getvalue(), image_format="png", height=height, width=width,
                filename=f"im{i}.png", source_id=str(COCO_IMAGE_IDS[i]),
                boxes=[_normalized(b, height, width) for b, _, _ in objects],
                labels=[label for _, label, _ in objects], texts=[CLASS_NAMES[l - 1] for _, l, _ in objects],
                difficult=[0] * len(objects), truncated=[0] * len(objects),
                is_crowd=[d for _, _, d in objects], area=[LARGE] * len(objects))
            writer.write(example.SerializeToString())
    write_category_map(category_map_path(directory, "cocotest"),
                       [Category(label, coco_id, name) for label, (coco_id, name)
                        in enumerate(zip(COCO_CATEGORY_IDS, CLASS_NAMES), start=1)])
    return directory


def coco_instances():
    """The COCO annotation file IMAGES would have come from, written here independently."""
    images, annotations = [], []
    for i, (height, width, objects) in enumerate(IMAGES):
        images.append({"id": COCO_IMAGE_IDS[i], "width": width, "height": height, "file_name": f"im{i}.png"})
        for box, label, crowd in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": COCO_IMAGE_IDS[i],
                                "category_id": COCO_CATEGORY_IDS[label - 1], "bbox": _coco_box(box),
                                "area": LARGE, "iscrowd": crowd})
    categories = [{"id": c, "name": n} for c, n in zip(COCO_CATEGORY_IDS, CLASS_NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _pycocotools_stats(instances, results):
    """COCOeval's 12 numbers, pycocotools used directly (None where it reports -1)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = instances
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [None if v == -1 else float(v) for v in evaluation.stats]


def test_coco_metric_on_coco_records_writes_coco_ids_and_pixel_boxes(setup, tmp_path):
    """Ground truth fed as detections through the evaluation loop and the report writer: the
    results JSON carries COCO's image and category ids and [x, y, w, h] pixel boxes, and
    pycocotools scores it 1.0 against the annotation file; crowd regions and areas reach the
    metric (the undetected crowd region costs nothing; every object counts as large)."""
    from ssd.engine.evaluators import make_evaluator

    config = setup["config"]
    data = write_coco_records(tmp_path / "data")
    files = resolve_record_files(str(data))
    evaluator = make_evaluator("coco", config, files)
    assert list(evaluator.scorer.category_ids) == COCO_CATEGORY_IDS
    per_image = []
    for height, width, objects in IMAGES:  # every object but the crowd region, the highest score first
        kept = [(b, label) for b, label, crowd in objects if not crowd]
        per_image.append(([_normalized(b, height, width) for b, _ in kept], [0.9 - 0.1 * k for k in range(len(kept))],
                          [label for _, label in kept]))
    batches = [tuple(list(x) for x in zip(*per_image[s:s + 2])) for s in range(0, len(IMAGES), 2)]
    evaluation.evaluate(_ScriptedDetector(batches), make_input_fn(files, config, ModeKeys.EVAL)(None),
                        evaluator, progress_stream=io.StringIO())
    result = evaluator.result()
    summary = evaluation_reports.write_report(evaluator, result, tmp_path / "report", step=3, checkpoint_path="ckpt-3")

    results = json.loads((tmp_path / "report" / DETECTIONS_FILENAME).read_text())
    expected = sorted((COCO_IMAGE_IDS[i], COCO_CATEGORY_IDS[label - 1], _coco_box(box))
                      for i, (_, _, objects) in enumerate(IMAGES) for box, label, crowd in objects if not crowd)
    assert sorted((r["image_id"], r["category_id"], r["bbox"]) for r in results) == expected
    assert not (tmp_path / "report" / GROUND_TRUTH_FILENAME).exists()  # the COCO file is the truth
    stats = _pycocotools_stats(coco_instances(), results)
    saved = json.loads((tmp_path / "report" / "summary.json").read_text())
    from ssd.coco.metric import STAT_KEYS
    assert [saved[key] for key in STAT_KEYS] == stats
    assert stats[:6] == [1.0, 1.0, 1.0, None, None, 1.0]  # AP, AP50, AP75, small, medium, large
    assert saved["classes"] == pytest.approx({name: 1.0 for name in CLASS_NAMES})
    assert saved["num_crowd"] == {"circle": 1, "square": 0, "triangle": 0}
    assert saved["step"] == 3 and saved["checkpoint"] == "ckpt-3" and saved == json.loads(json.dumps(summary))


def test_coco_metric_on_voc_records_scores_by_hand_and_writes_its_ground_truth(setup, tmp_path):
    from ssd.coco.eval import evaluate_files
    from ssd.coco.metric import STAT_KEYS
    from ssd.engine.evaluators import make_evaluator

    config = setup["config"]
    evaluator = make_evaluator("coco", config, resolve_record_files(setup["data"]))
    assert not evaluator.uses_coco_ids  # VOC-format records: no category map
    evaluation.evaluate(_ScriptedDetector(_scripted_detections()),
                        make_input_fn(setup["data"], config, ModeKeys.EVAL)(None), evaluator,
                        progress_stream=io.StringIO())
    result = evaluator.result()
    # circle: 2 positives (the difficult one is a crowd region), in score order FP, TP, ignored,
    # FP: precision 0.5 up to recall 0.5 -> 51 of COCO's 101 recall points at 0.5, at every IoU
    # (the detections are the ground-truth boxes); square and triangle: precision 1 to recall 1
    circle = 51 * 0.5 / 101
    assert result["classes"] == pytest.approx({"circle": circle, "square": 1.0, "triangle": 1.0})
    assert result["AP"] == pytest.approx((circle + 2) / 3) and result["AP50"] == pytest.approx((circle + 2) / 3)
    output = tmp_path / "report"
    evaluation_reports.write_report(evaluator, result, output, step=7, checkpoint_path="ckpt-7")
    truth = json.loads((output / GROUND_TRUTH_FILENAME).read_text())
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in truth["images"]] == [
        (k + 1, f"im{k}", h, w) for k, (h, w, _) in enumerate(IMAGES)]
    rescored = evaluate_files(output / GROUND_TRUTH_FILENAME, output / DETECTIONS_FILENAME)
    saved = json.loads((output / "summary.json").read_text())
    assert {key: saved[key] for key in STAT_KEYS} == {key: rescored[key] for key in STAT_KEYS}
    assert saved["classes"] == rescored["classes"]
    # the scorer's summary keys, plus the report's
    assert set(saved) == set(rescored) | {"step", "checkpoint"}

    # TensorBoard: the 12 numbers and per-class APs as scalars, no curves
    evaluation_reports.write_tensorboard(evaluator, result, tmp_path / "tb", 7)
    events = _events(tmp_path / "tb")
    tags = ({f"coco/{key}" for key in STAT_KEYS if result[key] is not None}
            | {f"coco_classes/{name}" for name in CLASS_NAMES})
    assert set(events.PluginTagToContent("scalars")) == tags == set(events.Tags()["tensors"])
    assert float(_tensor(events, "coco/AP")[1]) == pytest.approx(result["AP"])
    assert float(_tensor(events, "coco_classes/circle")[1]) == pytest.approx(circle)
    text = evaluator.format(result)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in text
    assert "circle" in text and "COCO AP (%), 5 images" in text


def test_coco_category_map_that_does_not_fit_the_model_is_named(setup, tmp_path):
    from ssd.coco.categories import Category, write_category_map
    from ssd.engine.evaluators import make_evaluator

    config = setup["config"]
    data = write_coco_records(tmp_path / "data")
    write_category_map(data / "cocotest_categories.json",
                       [Category(1, 11, "circle"), Category(2, 20, "triangle"), Category(3, 3, "square")])
    with pytest.raises(DataError, match="cocotest_categories.json.*square.*data.class_names"):
        checkpoint_evaluation.run_evaluation(config, setup["model_dir"], str(data), metric="coco")
    make_evaluator("voc07", config, resolve_record_files(str(data)))  # VOC ignores the map
    # COCO-converted records mixed with records without a map
    with pytest.raises(DataError, match="cannot mix"):
        make_evaluator("coco", config, [str(data / "cocotest-00000-of-00001"), setup["data"] + "/test-00000-of-00001"])


def _events(directory):
    events = EventAccumulator(str(directory), size_guidance={"tensors": 0})
    events.Reload()
    return events


def _tensor(events, tag):
    (event,) = events.Tensors(tag)
    return event.step, tf.make_ndarray(event.tensor_proto)


def test_tensorboard_gets_curves_and_pictures_of_the_first_images(setup, tmp_path):
    config = setup["config"]
    evaluator = VOCMetric(CLASS_NAMES, "voc07")
    dataset = make_input_fn(setup["data"], config, ModeKeys.EVAL)(None)
    stats = evaluation.evaluate(_ScriptedDetector(_scripted_detections()), dataset, evaluator,
                                progress_stream=io.StringIO(), num_samples=4)
    assert len(stats["samples"]) == 4  # the first four of five, across batches of two
    stats = evaluation.evaluate(_ScriptedDetector(_scripted_detections()),
                                make_input_fn(setup["data"], config, ModeKeys.EVAL)(None),
                                VOCMetric(CLASS_NAMES, "voc07"), progress_stream=io.StringIO(),
                                num_samples=EVAL_IMAGES)
    assert len(stats["samples"]) == len(IMAGES) < EVAL_IMAGES
    evaluator = VOCMetric(CLASS_NAMES, "voc07")
    evaluation.evaluate(_ScriptedDetector(_scripted_detections()), dataset, evaluator,
                        progress_stream=io.StringIO())
    result = evaluator.result()
    pictures = evaluation_pictures(stats["samples"], config)
    evaluation_reports.write_tensorboard(evaluator, result, tmp_path, 7, pictures)
    events = _events(tmp_path)

    assert set(events.PluginTagToContent("scalars")) == {"mAP"} | {f"classes/{n}" for n in CLASS_NAMES}
    # one curve per class, the evaluator's points, last detection first
    assert set(events.PluginTagToContent("pr_curves")) == {f"precision_recall/{n}" for n in CLASS_NAMES}
    for name in CLASS_NAMES:
        step, curve = _tensor(events, f"precision_recall/{name}")
        recall, precision = result["precision_recall"][name]
        assert step == 7 and curve.shape == (6, len(recall))
        np.testing.assert_allclose(curve[4][::-1], precision, rtol=1e-6)
        np.testing.assert_allclose(curve[5][::-1], recall, rtol=1e-6)
        tp = curve[0][::-1]
        np.testing.assert_allclose(curve[3][::-1], result["num_positives"][name] - tp)

    # pictures: the original aspect ratio, longer side the input size (300), detections | truth
    assert list(events.PluginTagToContent("images")) == [evaluation_reports.IMAGES_TAG]
    step, blobs = _tensor(events, evaluation_reports.IMAGES_TAG)
    widths = [2 * w + 8 for w in (300, 300, 171, 300, 300)]  # 80x60 -> 300x225, 40x70 -> 171x300 ...
    assert step == 7 and [p.width for p in pictures] == widths
    assert (int(blobs[0]), int(blobs[1])) == (max(widths), max(p.height for p in pictures))
    decoded = [np.asarray(Image.open(io.BytesIO(blob))) for blob in blobs[2:]]
    assert len(decoded) == len(IMAGES)
    for picture, png in zip(pictures, decoded):
        np.testing.assert_array_equal(png[:picture.height, :picture.width], np.asarray(picture))
    bar = pictures[0].height - 225

    def panels(index, width, height):
        picture = np.asarray(pictures[index]).astype(int)
        return picture[bar:bar + height, :width], picture[bar:bar + height, width + 8:2 * width + 8]

    # image 4 (45x45, no objects, its one detection scores 0.3): both panels are the photo itself,
    # turned back from BGR minus the mean into RGB pixels
    left, right = panels(4, 300, 300)
    np.testing.assert_array_equal(left, right)
    expected = tf.image.resize(tf.constant(_pixels(4), tf.float32), [300, 300]).numpy()
    assert np.abs(left - expected).max() <= 1.5
    # image 0 (60x80 -> 225x300): the circle's ground truth outline at its scaled edges
    left, right = panels(0, 300, 225)
    color = class_colors(len(CLASS_NAMES) + 1)[1]
    ymin, xmin, ymax, xmax = np.array(_normalized((11, 6, 40, 30), 60, 80)) * [225, 300, 225, 300]
    for panel in (right, left):  # its detection (0.9) is the ground-truth box
        row = panel[int((ymin + ymax) / 2)]
        assert any(tuple(row[x]) == color for x in range(int(xmin) - 1, int(xmin) + 2))
        assert any(tuple(row[x]) == color for x in range(int(xmax) - 2, int(xmax) + 1))
    # image 1 (50x50, a circle at the top left): its 0.95 false positive in the bottom-right
    # corner is drawn on the left only
    left, right = panels(1, 300, 300)
    assert np.array_equal(left[160:260, 160:260], right[160:260, 160:260])  # between the two boxes
    assert np.any(left[275:, 275:] != right[275:, 275:])
    assert any(tuple(left[285, x]) == color for x in range(268, 273))


def test_run_evaluation_reports_model_detections_in_voc_pixels(setup):
    config, model_dir = setup["config"], setup["model_dir"]
    table = []
    (summary,) = checkpoint_evaluation.run_evaluation(config, model_dir, setup["data"], print_table=table.append,
                                           progress_stream=io.StringIO())
    output = Path(model_dir) / "eval_1" / "voc07"  # the config's eval.metric
    assert summary["step"] == 1 and summary["checkpoint"] == setup["checkpoint"]
    assert summary["output_dir"] == str(output)
    assert "circle" in table[0] and "mAP" in table[0]
    saved = json.loads((output / "summary.json").read_text())
    assert saved["num_images"] == 5 and set(saved["classes"]) == set(CLASS_NAMES)

    # image 1's detections, computed here from the PNG pixels with the checkpoint's weights
    height, width, _ = IMAGES[1]
    inputs = tf.image.resize(tf.constant(_pixels(1), tf.float32), [300, 300])
    inputs = (inputs - tf.constant(config.data.mean_rgb))[..., ::-1][tf.newaxis]
    cls_logits, box_encodings = setup["model"](inputs, training=False)
    detections = postprocess(cls_logits, box_encodings, tf.constant(generate_anchors(config)), config)
    n = int(detections["num_detections"][0])
    assert n > 0
    expected = []
    for box, score, label in zip(detections["boxes"][0, :n].numpy(), detections["scores"][0, :n].numpy(),
                                 detections["classes"][0, :n].numpy()):
        ymin, xmin, ymax, xmax = box
        expected.append((label, score, [xmin * width + 1, ymin * height + 1, xmax * width, ymax * height]))
    found = []
    for label, name in enumerate(CLASS_NAMES, start=1):
        ids, scores, boxes = read_result_file(output / "results" / f"comp4_det_test_{name}.txt")
        found += [(label, s, list(b)) for i, s, b in zip(ids, scores, boxes) if i == "im1"]
    assert len(found) == n
    found.sort(key=lambda row: -row[1])
    expected.sort(key=lambda row: -row[1])
    for (label, score, box), (label2, score2, box2) in zip(expected, found):
        assert label == label2
        assert score == pytest.approx(score2, abs=1e-5)
        np.testing.assert_allclose(box2, box, atol=1e-3)

    # TensorBoard, in model_dir/eval at the checkpoint's step: mAP and per-class APs, the curves
    # of the classes with detections and ground truth, the pictures of the first images
    events = _events(Path(model_dir) / "eval")
    step, m_ap = _tensor(events, "mAP")
    assert step == 1 and float(m_ap) == pytest.approx(saved["mAP"])
    assert float(_tensor(events, "classes/circle")[1]) == pytest.approx(saved["classes"]["circle"])
    curves = {f"precision_recall/{name}" for name in CLASS_NAMES
              if saved["num_detections"][name] and saved["num_positives"][name]}
    assert curves and set(events.PluginTagToContent("pr_curves")) == curves
    step, blobs = _tensor(events, evaluation_reports.IMAGES_TAG)
    assert step == 1 and len(blobs) == 2 + len(IMAGES)  # width, height, then one PNG per image


def test_eval_app_runs_with_its_flags(setup, tmp_path):
    output = tmp_path / "report" / "voc12"
    completed = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), f"--model_dir={setup['model_dir']}",
         f"--data_dir={setup['data']}/test-*", "--metric=voc12", f"--output_dir={tmp_path / 'report'}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "VOC2010+ all-point AP (%), 5 images" in completed.stdout
    assert "eval 5/5 (100.0%)" in completed.stderr  # the progress line
    saved = json.loads((output / "summary.json").read_text())
    assert saved["metric"] == "voc12" and saved["step"] == 1
    assert (output / "precision_recall.png").is_file()
    assert sorted(os.listdir(output / "results")) == [f"comp4_det_test_{n}.txt" for n in CLASS_NAMES]


# --- errors --------------------------------------------------------------------------------

def test_no_checkpoint_is_a_clear_error(setup, tmp_path):
    empty = tmp_path / "untrained"
    save_config(setup["config"], empty)
    with pytest.raises(checkpoints.NoCheckpointError, match="no checkpoint in .*untrained"):
        checkpoint_evaluation.run_evaluation(setup["config"], str(empty), setup["data"])
    with pytest.raises(checkpoints.NoCheckpointError, match="ckpt-999 not found"):
        checkpoints.find_checkpoint(setup["model_dir"], os.path.join(setup["model_dir"], "ckpt-999"))


def test_checkpoint_of_another_model_names_the_mismatch(setup):
    other = tiny_config(**{"model.num_classes": 5, "data.class_names": CLASS_NAMES + ["star"]})
    model = build_inference_model(other)
    with pytest.raises(checkpoints.CheckpointMismatchError) as error:
        checkpoints.restore_checkpoint(model, setup["checkpoint"], other)
    message = str(error.value)
    assert "cls_0" in message  # the first head whose shape differs
    assert "model.num_classes=5" in message and "must match" in message


def test_bad_data_is_named(setup, tmp_path):
    config, model_dir = setup["config"], setup["model_dir"]
    empty = tmp_path / "empty-00000-of-00001"
    tf.io.TFRecordWriter(str(empty)).close()
    with pytest.raises(DataError, match="holds no records.*empty-00000-of-00001"):
        checkpoint_evaluation.run_evaluation(config, model_dir, str(empty))
    with pytest.raises(DataError, match="missing-\\*"):
        checkpoint_evaluation.run_evaluation(config, model_dir, str(tmp_path / "missing-*"))
    corrupt = tmp_path / "corrupt-00000-of-00001"
    corrupt.write_bytes(b"this is not a TFRecord file at all")
    with pytest.raises(DataError, match="corrupt-00000-of-00001"):
        checkpoint_evaluation.run_evaluation(config, model_dir, str(corrupt))
    (tmp_path / "other-00000-of-00001").write_bytes(empty.read_bytes())
    with pytest.raises(DataError, match="several data sets"):
        resolve_record_files(str(tmp_path))


# --- watching ------------------------------------------------------------------------------

class _FakeTime:
    def __init__(self, on_sleep=None):
        self.now = 0.0
        self.sleeps = []
        self.on_sleep = on_sleep

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(len(self.sleeps))


def test_watch_yields_new_checkpoints_newest_first_and_times_out(tmp_path):
    variable = tf.Variable(1.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), str(tmp_path), max_to_keep=5)
    manager.save(checkpoint_number=1)

    def train_more(calls):
        if calls == 2:  # training writes two checkpoints while the watcher waits
            manager.save(checkpoint_number=3)
            manager.save(checkpoint_number=5)

    fake = _FakeTime(train_more)
    watcher = checkpoints.watch_checkpoints(str(tmp_path), timeout_secs=100, interval_secs=30,
                                           sleep=fake.sleep, clock=fake.clock)
    assert next(watcher) == str(tmp_path / "ckpt-1")
    assert next(watcher) == str(tmp_path / "ckpt-5")  # ckpt-3 is skipped: already superseded
    assert fake.sleeps == [30, 30]
    with pytest.raises(StopIteration):
        next(watcher)
    assert sum(fake.sleeps[2:]) == pytest.approx(100)  # the timeout counts from the last yield


def test_checkpoint_removed_by_rotation_is_reported_and_not_listed(setup, tmp_path):
    config = setup["config"]
    path, _ = save_trainer_checkpoint(config, tmp_path, 4, seed=1)
    for name in os.listdir(tmp_path):
        if name.startswith("ckpt-4"):
            os.remove(tmp_path / name)
    assert checkpoints.listed_checkpoints(str(tmp_path)) == []
    model = build_inference_model(config)
    with pytest.raises(checkpoints.CheckpointRemovedError, match="ckpt-4 was removed"):
        checkpoints.restore_checkpoint(model, path, config)


def test_watch_stops_after_the_checkpoint_at_max_steps(setup, tmp_path):
    config = setup["config"]  # train.max_steps = 2
    model_dir = tmp_path / "run"
    save_config(config, model_dir)
    save_trainer_checkpoint(config, model_dir, 1, seed=1)
    save_trainer_checkpoint(config, model_dir, 2, seed=2)
    summaries = checkpoint_evaluation.run_evaluation(config, str(model_dir), setup["data"], watch=True,
                                          watch_timeout_secs=60, watch_interval_secs=1,
                                          print_table=None, progress_stream=io.StringIO())
    assert [s["step"] for s in summaries] == [2]
    assert (model_dir / "eval_2" / "voc07" / "summary.json").is_file()


def test_watch_skips_a_damaged_checkpoint_and_waits_for_the_next(setup, tmp_path, monkeypatch):
    config = setup["config"]  # train.max_steps = 2
    model_dir = tmp_path / "run"
    save_config(config, model_dir)
    save_trainer_checkpoint(config, model_dir, 1, seed=1)
    data_file = model_dir / "ckpt-1.data-00000-of-00001"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    state = {"saved": False}

    def sleep(_):  # training writes the next checkpoint while the watcher waits
        if not state["saved"]:
            save_trainer_checkpoint(config, model_dir, 2, seed=2)
            state["saved"] = True

    checkpoints_seen = []
    original = checkpoint_evaluation.watch_checkpoints

    def watching(*args, **kwargs):
        for path in original(*args, **kwargs, sleep=sleep):
            checkpoints_seen.append(path)
            yield path

    monkeypatch.setattr(checkpoint_evaluation, "watch_checkpoints", watching)
    summaries = checkpoint_evaluation.run_evaluation(config, str(model_dir), setup["data"], watch=True,
                                          watch_timeout_secs=60, watch_interval_secs=0.01,
                                          print_table=None, progress_stream=io.StringIO())
    assert [p.rsplit("/", 1)[-1] for p in checkpoints_seen] == ["ckpt-1", "ckpt-2"]
    assert [s["step"] for s in summaries] == [2]


# --- one directory per metric --------------------------------------------------------------------

def test_report_directories_are_named_after_the_metric():
    template = evaluation_reports.report_dir_template
    assert template("runs/a", None, "coco", per_step=False) == os.path.join("runs/a", "eval_{step}", "coco")
    assert template("runs/a", None, "voc07", per_step=True) == os.path.join("runs/a", "eval_{step}", "voc07")
    assert template("runs/a", "out", "voc12", per_step=False) == os.path.join("out", "voc12")
    assert template("runs/a", "out", "coco", per_step=True) == os.path.join("out", "eval_{step}", "coco")


def test_two_metrics_on_one_checkpoint_keep_their_reports_apart(setup, tmp_path):
    config, model_dir = setup["config"], setup["model_dir"]
    outputs = {}
    for metric in ("coco", "voc07"):
        (summary,) = checkpoint_evaluation.run_evaluation(
            config, model_dir, setup["data"], metric=metric, output_dir=str(tmp_path),
            print_table=None, progress_stream=io.StringIO())
        outputs[metric] = Path(summary["output_dir"])
    assert outputs == {"coco": tmp_path / "coco", "voc07": tmp_path / "voc07"}
    coco = json.loads((tmp_path / "coco" / "summary.json").read_text())
    voc = json.loads((tmp_path / "voc07" / "summary.json").read_text())
    assert coco["metric"] == "coco" and "AP" in coco and voc["metric"] == "voc07" and "mAP" in voc
    assert sorted(os.listdir(tmp_path / "coco")) == ["detections.json", "ground_truth.json", "summary.json"]
    assert sorted(os.listdir(tmp_path / "voc07")) == ["precision_recall.png", "results", "summary.json"]
    assert sorted(os.listdir(tmp_path)) == ["coco", "voc07"]
