"""The COCO path end to end, with the real command lines as subprocesses: the shapes set written as
COCO JSON (`dataset/make_shapes.py --format=coco`, sparse category ids) -> `dataset/convert_coco.py`
-> a few training steps with COCO evaluation during training -> `eval.py --metric=coco`; the
results JSON is then scored with pycocotools directly against the annotation file. The same
images converted from VOC format are scored with the COCO metric too. The numbers of so short a
training mean nothing and are not asserted, only that every path gives the same ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

pytestmark = pytest.mark.slow  # trains a model or starts processes


ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["circle", "square", "triangle", "star"]
COCO_IDS = {"circle": 11, "square": 3, "triangle": 20, "star": 7}  # make_shapes.COCO_CATEGORY_IDS
NUM_TEST = 6
TINY = ["--set", "model.width_multiplier=0.125", "--set", "model.num_classes=5",
        "--set", f"data.class_names={json.dumps(CLASSES)}", "--set", "data.shuffle_buffer=8",
        "--set", "eval.batch_size=4", "--set", "train.log_step_count_steps=1", "--pretrained", "none"]


def _run(*command, timeout=240):
    completed = subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, capture_output=True,
                               text=True, timeout=timeout)
    assert completed.returncode == 0, f"{command[0]} failed:\n{completed.stderr[-4000:]}"
    return completed


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    shapes = root / "shapes_coco"
    _run(ROOT / "dataset" / "make_shapes.py", f"--output_dir={shapes}", "--format=coco",
         "--num_trainval=1", f"--num_test={NUM_TEST}", "--seed=5")
    annotations = shapes / "annotations" / "instances_test.json"
    records = root / "records"
    _run(ROOT / "dataset" / "convert_coco.py", f"--annotations_file={annotations}",
         f"--image_dir={shapes / 'images'}", f"--output_directory={records}", "--name=shapes_test",
         "--num_shards=2", "--num_workers=1")
    data = f"{records}/shapes_test-*"
    model_dir = root / "model"
    # two steps on the test images themselves: a checkpoint to evaluate is all this needs
    trained = _run(ROOT / "train.py", f"--data_dir={data}", f"--model_dir={model_dir}", "--batch_size=2",
                   "--max_steps=2", f"--eval_data_dir={data}", "--eval_every_steps=2",
                   "--set", 'eval.metric="coco"', *TINY)
    report = root / "report"
    evaluated = _run(ROOT / "eval.py", f"--model_dir={model_dir}", f"--data_dir={data}", "--metric=coco",
                     f"--output_dir={report}")
    return {"root": root, "shapes": shapes, "annotations": annotations, "data": data,
            "model_dir": model_dir, "report": report / "coco", "stdout": evaluated.stdout,
            "train_log": trained.stderr}


def _pycocotools(annotations_file, results):
    """pycocotools on its own: COCO(annotations).loadRes(results), COCOeval; the 12 numbers
    (None where it reports -1) and the evaluation."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotations_file))
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [None if v == -1 else float(v) for v in evaluation.stats]


def test_eval_py_results_score_the_same_with_pycocotools_and_carry_coco_ids(coco_run):
    from ssd.coco.metric import STAT_KEYS

    report = coco_run["report"]
    summary = json.loads((report / "summary.json").read_text())
    results = json.loads((report / "detections.json").read_text())
    assert results, "the tiny model detects nothing: nothing to check"
    assert [summary[key] for key in STAT_KEYS] == _pycocotools(coco_run["annotations"], results)
    assert summary["step"] == 2 and summary["checkpoint"] == str(coco_run["model_dir"] / "ckpt-2")
    assert summary["num_images"] == NUM_TEST and set(summary["classes"]) == set(CLASSES)
    assert not (report / "ground_truth.json").exists()  # COCO records: the annotation file is the truth

    instances = json.loads(coco_run["annotations"].read_text())
    sizes = {image["id"]: (image["width"], image["height"]) for image in instances["images"]}
    assert {r["category_id"] for r in results} <= set(COCO_IDS.values())
    assert len({r["category_id"] for r in results}) > 1  # the sparse ids, not one label
    assert {r["image_id"] for r in results} <= set(sizes)
    for r in results:  # [x, y, w, h] in the original image's pixels
        width, height = sizes[r["image_id"]]
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0
        assert x + w <= width + 0.01 and y + h <= height + 0.01
    # the whole image range is used: boxes are not normalized
    assert max(r["bbox"][0] + r["bbox"][2] for r in results) > 1.5
    # printed: COCO's 12-number block and the per-class table
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in coco_run["stdout"]
    assert f"COCO AP (%), {NUM_TEST} images" in coco_run["stdout"]
    assert f"reports in {report}" in coco_run["stdout"]


def test_evaluation_during_training_reported_the_same_numbers(coco_run):
    from ssd.coco.metric import STAT_KEYS

    summary = json.loads((coco_run["report"] / "summary.json").read_text())
    scalars = {}
    for path in sorted((coco_run["model_dir"] / "eval").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.ndim == 0:
                    scalars.setdefault((value.tag, event.step), []).append(float(array))
    # training's evaluation at step 2 and eval.py's of ckpt-2 both wrote here: the same values
    expected = {f"coco/{key}": summary[key] for key in STAT_KEYS if summary[key] is not None}
    expected.update({f"coco_classes/{name}": ap for name, ap in summary["classes"].items() if ap is not None})
    assert {tag for tag, _ in scalars} == set(expected) and {step for _, step in scalars} == {2}
    for tag, value in expected.items():
        assert scalars[(tag, 2)] == pytest.approx([value, value], rel=1e-6), tag
    assert "(step 2) with the coco metric" in coco_run["train_log"]


def test_ground_truth_as_detections_scores_one_through_the_report_writer(coco_run, tmp_path):
    """The converted records' own boxes fed as detections through the evaluator and the writer:
    pycocotools matches every one to its annotation (AP 1.0 at IoU 0.95), so ids, [x, y, w, h] and
    pixels agree with the annotation file."""
    from ssd.config.loading import load_saved_config
    from ssd.data.input_fn import make_input_fn
    from ssd.data.record_files import resolve_record_files
    from ssd.engine.evaluation_reports import write_report
    from ssd.engine.evaluators import make_evaluator
    from ssd.modes import ModeKeys

    config = load_saved_config(str(coco_run["model_dir"]))
    files = resolve_record_files(coco_run["data"])
    evaluator = make_evaluator("coco", config, files)
    for features, labels in make_input_fn(files, config, ModeKeys.EVAL)(None):
        num = labels["labels"].shape[1]
        detections = {"boxes": labels["boxes"], "classes": labels["labels"],
                      "scores": tf.ones_like(labels["boxes"][..., 0]) - tf.range(num, dtype=tf.float32) / 100,
                      "num_detections": labels["num_boxes"]}
        evaluator.add_batch(features["image_id"].numpy(), features["original_shape"].numpy(), detections, labels)
    write_report(evaluator, evaluator.result(), tmp_path, step=0, checkpoint_path="none")
    results = json.loads((tmp_path / "detections.json").read_text())
    instances = json.loads(coco_run["annotations"].read_text())
    assert len(results) == len(instances["annotations"])
    stats = _pycocotools(coco_run["annotations"], results)
    assert stats[0] == stats[1] == stats[2] == 1.0
    by_annotation = sorted((a["image_id"], a["category_id"], a["bbox"]) for a in instances["annotations"])
    by_results = sorted((r["image_id"], r["category_id"], r["bbox"]) for r in results)
    for (image, category, box), (image2, category2, box2) in zip(by_annotation, by_results):
        assert (image, category) == (image2, category2)
        np.testing.assert_allclose(box2, box, atol=0.011)
    # the objects' areas are COCO's (masks), not the boxes': the same small/medium/large split
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [summary[key] for key in ("APs", "APm", "APl")] == stats[3:6]


def test_coco_metric_on_the_same_images_converted_from_voc(coco_run):
    """make_shapes' VOC format of the same seed -> convert_voc.py -> eval.py --metric=coco: the
    ground truth it builds is written and re-scores to its summary, and holds the COCO file's boxes."""
    from ssd.coco.metric import STAT_KEYS

    root = coco_run["root"]
    voc = root / "shapes_voc"
    _run(ROOT / "dataset" / "make_shapes.py", f"--output_dir={voc}", "--num_trainval=1",
         f"--num_test={NUM_TEST}", "--seed=5")
    records = root / "voc_records"
    _run(ROOT / "dataset" / "convert_voc.py", f"--voc_root={voc}", "--split=test", f"--classes={','.join(CLASSES)}",
         f"--output_directory={records}", "--name=voc_test", "--num_workers=1")
    report = root / "voc_report"
    _run(ROOT / "eval.py", f"--model_dir={coco_run['model_dir']}", f"--data_dir={records}", "--metric=coco",
         f"--output_dir={report}")
    report = report / "coco"  # the metric's directory
    summary = json.loads((report / "summary.json").read_text())
    results = json.loads((report / "detections.json").read_text())
    assert [summary[key] for key in STAT_KEYS] == _pycocotools(report / "ground_truth.json", results)

    truth = json.loads((report / "ground_truth.json").read_text())
    assert sorted(c["id"] for c in truth["categories"]) == [1, 2, 3, 4]  # no map: labels are the ids
    coco = json.loads(coco_run["annotations"].read_text())
    coco_boxes = {}
    for a in coco["annotations"]:
        coco_boxes.setdefault(a["image_id"], []).append(a["bbox"])
    names = {image["id"]: int(image["file_name"]) for image in truth["images"]}  # "000003" -> COCO id 3
    voc_boxes = {}
    for a in truth["annotations"]:
        voc_boxes.setdefault(names[a["image_id"]], []).append(a["bbox"])
    assert set(voc_boxes) == set(coco_boxes)
    for image, boxes in coco_boxes.items():
        np.testing.assert_allclose(sorted(voc_boxes[image]), sorted(boxes), atol=1e-6)
