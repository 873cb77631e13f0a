"""Evaluating exported models (eval.py --exported_model): the SavedModel and the float .tflite of
the kept trained shapes model (tests/assets/shapes_model.py) score as its checkpoint does, through
the same loop and reports; the .tflite's tensors carry the signature's names; what is not an
exported model fails in one line naming the path.
"""

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ssd.engine.checkpoint_evaluation import run_evaluation
from ssd.engine.exported_evaluation import default_output_dir, evaluate_exported
from ssd.inference import exported as ex
from ssd.inference import tflite as te
from ssd.inference.detector import load_trained_model
from ssd.inference.saved_model import SIGNATURE_ENCODED, export_saved_model

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # dataset/ holds scripts, not an installed package
    sys.path.insert(0, str(ROOT))

from dataset.convert_voc import convert_voc  # noqa: E402
from dataset.make_shapes import make_shapes_dataset  # noqa: E402
from tests.assets.shapes_model import CLASSES, MODEL_DIR, SEED, copy_model_dir  # noqa: E402

# The tests using the `shapes` fixture export the model (about 15 s of CPU with the evaluations):
# marked slow; the others take seconds.
exports_models = pytest.mark.slow

NUM_IMAGES = 60
# Largest differences from the checkpoint's APs (mAP and per class), measured on these 60 images:
# SavedModel 0, float .tflite 0.0017 (int8 .tflite 0.0040); on the 240 test images of
# tests/inference/test_tflite.py: 0, 0.0012 (0.0026). The SavedModel
# computes the same graph with its batch norms folded (float rounding); the .tflite gets each
# image resized to uint8 (rounded to whole values) where the checkpoint's input stays float.
SAVED_MODEL_AP_ATOL = 1e-3
TFLITE_AP_ATOL = 0.01


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """{"base", "data", "model_dir", "config", "checkpoint", "saved_model", "tflite_dir",
    "tflite"}: the kept model, its exports and NUM_IMAGES test records."""
    base = tmp_path_factory.mktemp("exported")
    make_shapes_dataset(base / "voc", 0, NUM_IMAGES, seed=SEED)
    convert_voc([base / "voc"], base / "records", "shapes_test", CLASSES, splits=("test",),
                progress_stream=io.StringIO())
    model_dir = copy_model_dir(base / "model")
    config, model, checkpoint, step = load_trained_model(str(model_dir))
    source = {"checkpoint": checkpoint, "step": step}
    saved_model = export_saved_model(model, config, base / "saved_model", source=source)
    tflite = te.export_tflite(model, config, base / "lite", source=source)
    return {"base": base, "data": str(base / "records" / "shapes_test-*"), "model_dir": str(model_dir),
            "config": config, "checkpoint": checkpoint, "saved_model": saved_model,
            "tflite_dir": str(base / "lite"), "tflite": tflite}


def _checkpoint_summary(shapes, metric):
    (summary,) = run_evaluation(shapes["config"], shapes["model_dir"], shapes["data"], metric=metric,
                                output_dir=str(shapes["base"] / f"checkpoint_{metric}"),
                                progress_stream=io.StringIO(), print_table=None)
    return summary


@pytest.fixture(scope="module")
def checkpoint_voc07(shapes):
    summary = _checkpoint_summary(shapes, "voc07")
    assert summary["mAP"] > 0.5  # a model that detects: the comparisons mean something
    return summary


def _assert_scores_close(summary, reference, atol, key="mAP"):
    assert summary[key] == pytest.approx(reference[key], abs=atol)
    assert set(summary["classes"]) == set(CLASSES)
    for name in CLASSES:
        assert summary["classes"][name] == pytest.approx(reference["classes"][name], abs=atol), name
    assert summary["num_images"] == reference["num_images"] == NUM_IMAGES
    assert summary["num_positives"] == reference["num_positives"]


@exports_models
def test_saved_model_scores_as_its_checkpoint(shapes, checkpoint_voc07):
    table = []
    summary = evaluate_exported(shapes["saved_model"], shapes["data"], print_table=table.append,
                                progress_stream=io.StringIO())
    _assert_scores_close(summary, checkpoint_voc07, SAVED_MODEL_AP_ATOL)
    assert summary["step"] == 600 and summary["checkpoint"] == shapes["checkpoint"]
    assert summary["format"] == "saved_model" and summary["quantize"] is None
    assert summary["exported_model"] == shapes["saved_model"]
    output = Path(shapes["saved_model"] + "_eval") / "voc07"  # beside the model, not in it
    assert summary["output_dir"] == str(output)
    assert json.loads((output / "summary.json").read_text())["mAP"] == summary["mAP"]
    assert (output / "precision_recall.png").is_file()
    assert sorted(os.listdir(output / "results")) == sorted(f"comp4_det_test_{n}.txt" for n in CLASSES)
    assert all(name in table[0] for name in CLASSES) and "mAP" in table[0]


@exports_models
def test_float_tflite_scores_as_its_checkpoint(shapes, checkpoint_voc07):
    # the directory export.py wrote stands for its model.tflite
    summary = evaluate_exported(shapes["tflite_dir"], shapes["data"], print_table=None,
                                progress_stream=io.StringIO())
    _assert_scores_close(summary, checkpoint_voc07, TFLITE_AP_ATOL)
    assert summary["exported_model"] == shapes["tflite"] and summary["format"] == "tflite"
    assert summary["step"] == 600 and summary["checkpoint"] == shapes["checkpoint"]
    assert summary["output_dir"] == os.path.join(shapes["tflite_dir"], "model_eval", "voc07")
    assert sorted(os.listdir(summary["output_dir"])) == ["precision_recall.png", "results", "summary.json"]


@exports_models
def test_coco_metric_of_the_saved_model_is_the_checkpoints(shapes, tmp_path):
    reference = _checkpoint_summary(shapes, "coco")
    summary = evaluate_exported(shapes["saved_model"], shapes["data"], metric="coco",
                                output_dir=tmp_path / "coco", print_table=None, progress_stream=io.StringIO())
    assert summary["metric"] == "coco" and reference["AP"] > 0.3
    _assert_scores_close(summary, reference, SAVED_MODEL_AP_ATOL, key="AP")  # classes: AP@[.5:.95]
    for key in ("AP50", "AP75", "AR100"):
        assert summary[key] == pytest.approx(reference[key], abs=SAVED_MODEL_AP_ATOL), key
    assert sorted(os.listdir(tmp_path / "coco" / "coco")) == ["detections.json", "ground_truth.json", "summary.json"]


def test_default_output_dir_is_beside_the_model():
    assert default_output_dir("exported/ssd300/") == os.path.join("exported", "ssd300_eval")
    assert default_output_dir("exported/lite/model.tflite") == os.path.join("exported", "lite", "model_eval")


def test_export_info_absent_or_damaged_reads_as_unknown(tmp_path):
    """Exports made before export.json, or with a damaged one, still evaluate (step and checkpoint None)."""
    files = ex.ExportedFiles(ex.TFLITE, str(tmp_path / "model.tflite"), str(tmp_path / "config.json"),
                             str(tmp_path / "export.json"))
    assert ex.read_info(files) == {}
    (tmp_path / "export.json").write_text("{not json")
    assert ex.read_info(files) == {}
    (tmp_path / "export.json").write_text('{"checkpoint": "runs/a/ckpt-5", "step": 5, "format": "tflite", '
                                          '"quantize": "int8"}')
    assert ex.read_info(files)["step"] == 5


# --- the .tflite's names -------------------------------------------------------------------

@exports_models
def test_tflite_tensors_and_signature_carry_the_saved_models_output_names(shapes):
    runner = te.interpreter(Path(shapes["tflite"]).read_bytes())
    names = set(te.OUTPUT_NAMES.values())
    assert {d["name"] for d in runner.get_output_details()} == names
    assert [d["name"] for d in runner.get_input_details()] == [te.INPUT_NAME]
    signature = runner.get_signature_runner()  # the only signature
    out = signature(images=np.zeros((1, 300, 300, 3), np.uint8))
    assert set(out) == names
    assert out["detection_boxes"].shape == (1, 200, 4) and out["detection_classes"].dtype == np.int32
    serving = tf.saved_model.load(shapes["saved_model"]).signatures[SIGNATURE_ENCODED]
    assert names <= set(serving.structured_outputs)


def test_naming_the_signature_tensors_changes_no_result(tmp_path):
    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([2], tf.float32, name="values")])
        def serve(self, values):
            return {"total": tf.reduce_sum(values), "doubled": values * 2.0}

    module = Module()
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
    content = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path)).convert()
    before = {d["name"] for d in te.interpreter(content).get_output_details()}
    assert before.isdisjoint({"total", "doubled"})  # the converter's names: what is fixed
    named = te.name_signature_tensors(content)
    runner = te.interpreter(named)
    assert {d["name"] for d in runner.get_output_details()} == {"total", "doubled"}
    assert [d["name"] for d in runner.get_input_details()] == ["values"]
    out = runner.get_signature_runner()(values=np.array([1.5, 2.0], np.float32))
    assert float(out["total"]) == 3.5
    np.testing.assert_array_equal(out["doubled"], [3.0, 4.0])


# --- errors: one line naming the path -------------------------------------------------------

def test_what_is_not_an_exported_model_is_named(tmp_path):
    with pytest.raises(ex.ExportedModelError, match="no such file or directory") as error:
        ex.load_exported(tmp_path / "missing")
    assert str(tmp_path / "missing") in _one_line(error)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ex.ExportedModelError, match="not a SavedModel .*model.tflite") as error:
        ex.load_exported(tmp_path / "empty")
    _one_line(error)
    text = tmp_path / "notes.txt"
    text.write_text("these are not the weights you are looking for\n")
    with pytest.raises(ex.ExportedModelError, match="notes.txt: not a TFLite model") as error:
        ex.load_exported(text)
    _one_line(error)
    with pytest.raises(ex.ExportedModelError, match="notes.txt: not a TFLite model"):
        ex.load_exported(tmp_path / "notes.txt")
    short = tmp_path / "short.tflite"
    short.write_bytes(b"TF")
    with pytest.raises(ex.ExportedModelError, match="short.tflite: not a TFLite model"):
        ex.load_exported(short)


def test_tflite_without_its_config_or_damaged_is_named(tmp_path):
    lite = tmp_path / "lite"
    lite.mkdir()
    (lite / "model.tflite").write_bytes(b"\0\0\0\0TFL3" + b"\0" * 40)  # the identifier, then nothing
    with pytest.raises(ex.ExportedModelError, match=r"config.json: missing.*export .*model.tflite again") as error:
        ex.load_exported(lite)
    _one_line(error)
    shutil.copy(MODEL_DIR / "config.json", lite / "config.json")
    with pytest.raises(ex.ExportedModelError, match="model.tflite: the TFLite interpreter cannot load it") as error:
        ex.load_exported(lite / "model.tflite")
    _one_line(error)


@exports_models
def test_model_whose_classes_disagree_with_the_records_is_named(shapes, tmp_path):
    copy = Path(shutil.copytree(shapes["tflite_dir"], tmp_path / "lite", ignore=shutil.ignore_patterns("*_eval")))
    config = json.loads((copy / "config.json").read_text())
    config["data"]["class_names"] = ["square", "circle", "triangle", "star"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ex.ExportedModelError, match=r"model.tflite: the model's classes \(square, circle") as error:
        evaluate_exported(copy, shapes["data"], print_table=None, progress_stream=io.StringIO())
    message = _one_line(error)
    assert "label 1: records 'circle', config 'square' (and 1 more)" in message
    assert not (copy / "model_eval").exists()


@exports_models
def test_saved_model_whose_config_disagrees_with_its_classes_is_named(shapes, tmp_path):
    copy = Path(shutil.copytree(shapes["saved_model"], tmp_path / "saved"))
    path = copy / "assets" / "config.json"
    config = json.loads(path.read_text())
    config["data"]["class_names"] = ["a", "b", "c", "d"]
    path.write_text(json.dumps(config))
    with pytest.raises(ex.ExportedModelError, match=r"saved: the model's classes \['circle'") as error:
        ex.load_exported(copy)
    _one_line(error)


@exports_models
def test_tflite_whose_input_size_is_not_its_configs_is_named(shapes):
    config = shapes["config"]
    other = dataclasses.replace(config, model=dataclasses.replace(config.model, input_size=512))
    with pytest.raises(ex.ExportedModelError, match=r"input \[1, 300, 300, 3\], but its config says "
                       r"model.input_size 512") as error:
        ex.TFLiteDetector(shapes["tflite"], other)
    _one_line(error)


@pytest.mark.slow  # starts processes
def test_eval_app_scores_an_exported_model_and_refuses_in_one_line(shapes, tmp_path):
    command = [sys.executable, str(ROOT / "eval.py"), f"--data_dir={shapes['data']}"]
    done = subprocess.run(command + [f"--exported_model={shapes['tflite']}", f"--output_dir={tmp_path / 'out'}",
                                     "--metric=voc12"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"VOC2010+ all-point AP (%), {NUM_IMAGES} images" in done.stdout
    assert f"reports in {tmp_path / 'out' / 'voc12'}" in done.stdout
    saved = json.loads((tmp_path / "out" / "voc12" / "summary.json").read_text())
    assert saved["metric"] == "voc12" and saved["format"] == "tflite" and saved["step"] == 600

    refused = subprocess.run(command + [f"--exported_model={tmp_path / 'nothing'}"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == \
        f"eval.py: error: {tmp_path / 'nothing'}: no such file or directory"
    mixed = subprocess.run(command + [f"--exported_model={shapes['tflite']}", "--watch"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert mixed.returncode == 2 and "--watch: for checkpoints only, not with --exported_model" in mixed.stderr
