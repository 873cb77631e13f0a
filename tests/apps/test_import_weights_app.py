"""import_weights.py end to end: the app writes a model directory that the inference path
(eval.py, visualize.py, export.py: config.json, find_checkpoint, restore_checkpoint, Detector) and
train.py's resume (every training item restored from it) accept, with the source's weights."""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd.config.loading import load_saved_config
from ssd.inference.detector import Detector, build_inference_model
from ssd.modeling import checkpoints
from ssd.modeling.build import build_model
from ssd.weights import caffe_original, tf1_original
from ssd.weights.importing import resolve_config
from tests.weights.test_import_caffe import caffe_layers, caffemodel
from tests.weights.test_import_tf1 import tf1_variables, write_tf1_checkpoint

pytestmark = pytest.mark.slow  # trains a model or starts processes


REPO = Path(__file__).resolve().parents[2]


def run_app(*arguments):
    return subprocess.run([sys.executable, str(REPO / "import_weights.py"), *arguments], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def detections(model_dir, images):
    """Detections through the apps' inference path, from the model directory alone."""
    config = load_saved_config(model_dir)
    model = build_inference_model(config)
    step = checkpoints.restore_checkpoint(model, checkpoints.find_checkpoint(str(model_dir)), config)
    assert step == 0
    return Detector(model, config).detect_arrays(images)


def expected_detections(module, path, images):
    """The same through a model given the source module's arrays in memory."""
    config = resolve_config(module, path, None, None)[0]
    model = build_model(config)
    arrays, unused = module.model_arrays(path, config, model)
    assert not unused
    for variable in model.variables:
        variable.assign(arrays[variable.path])
    return Detector(model, config).detect_arrays(images)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    caffe = root / "ssd300.caffemodel"
    caffe.write_bytes(caffemodel(caffe_layers(np.random.default_rng(0), "ssd300", 21)))
    tf1 = write_tf1_checkpoint(str(root / "model.ckpt"), tf1_variables(np.random.default_rng(1)))
    return {"caffe": (caffe_original, str(caffe)), "tf1": (tf1_original, tf1)}


@pytest.mark.parametrize("source", ["caffe", "tf1"])
def test_app_writes_a_model_dir_the_apps_use(tmp_path, sources, source):
    module, path = sources[source]
    model_dir = tmp_path / "run"
    completed = run_app(f"--source={source}", f"--input={path}", f"--model_dir={model_dir}")
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "config: ssd300_voc0712" in out and "imported 71 variables" in out
    for app in ("eval.py", "visualize.py", "export.py"):
        assert f"python {app} --model_dir={model_dir}" in out
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
              rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)]
    got, want = detections(model_dir, images), expected_detections(module, path, images)
    for g, e in zip(got, want):
        assert g["num_detections"] == e["num_detections"] > 0
        np.testing.assert_allclose(g["pixel_boxes"], e["pixel_boxes"], atol=1e-3)
        np.testing.assert_allclose(g["scores"], e["scores"], atol=1e-5)
        np.testing.assert_array_equal(g["classes"], e["classes"])


def test_train_resume_restores_the_imported_checkpoint(tmp_path, sources):
    """What train.py's Estimator does on resume: every training item, optimizer included."""
    model_dir = tmp_path / "run"
    assert run_app("--source=caffe", f"--input={sources['caffe'][1]}",
                   f"--model_dir={model_dir}").returncode == 0
    config = load_saved_config(model_dir)
    model = build_model(config)
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(7, dtype=tf.int64)
    items = checkpoints.training_items(model, step, optimizer)
    assert checkpoints.restore_newest_intact(items, str(model_dir)).endswith("ckpt-0")
    assert int(step.numpy()) == 0
    reader = tf.train.load_checkpoint(str(model_dir / "ckpt-0"))
    conv = model.get_layer("conv1_1").kernel.numpy()
    stored = [n for n in reader.get_variable_to_shape_map() if n.startswith("model/")
              and reader.get_variable_to_shape_map()[n] == list(conv.shape)]
    assert any(np.array_equal(reader.get_tensor(n), conv) for n in stored)


def test_errors_are_one_line_and_write_nothing(tmp_path, sources):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    completed = run_app("--source=caffe", f"--input={sources['caffe'][1]}", f"--model_dir={occupied}")
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1].startswith("import_weights.py: error: ")
    assert "not empty" in completed.stderr
    # a Caffe file given as a TF1 checkpoint
    completed = run_app("--source=tf1", f"--input={sources['caffe'][1]}",
                        f"--model_dir={tmp_path / 'new'}")
    assert completed.returncode == 1 and "not a readable TensorFlow checkpoint" in completed.stderr
    assert not (tmp_path / "new").exists()
    completed = run_app("--source=caffe", f"--model_dir={tmp_path / 'new'}")
    assert completed.returncode == 2 and "--input is required" in completed.stderr
