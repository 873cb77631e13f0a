"""visualize.py: drawn copies at the original size, ground truth side by side, skips, SavedModel mode."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd.config import load_config, save_config
from ssd.draw import class_colors
from ssd import checkpoints
from ssd.detector import build_inference_model
from ssd.estimator import ModelContext
from ssd.export import export_saved_model
from ssd.model_fn import SSDModelFn

REPO = Path(__file__).resolve().parent.parent
CLASS_NAMES = ["circle", "square", "triangle"]
# VOC box of the annotated image (1-based inclusive) -> continuous edges [10, 100] x [20, 90]
GT_BOX = (11, 21, 100, 90)
GT_LABEL = 2


def _save_checkpoint(config, model_dir):
    """A checkpoint laid out as the Estimator saves it."""
    tf.keras.utils.set_random_seed(11)
    global_step = tf.Variable(3, dtype=tf.int64, trainable=False, name="global_step")
    holder = SSDModelFn(config, ModelContext(global_step, 1))
    holder.optimizer.build(holder.model.trainable_variables)
    items = checkpoints.training_items(holder.model, global_step, holder.optimizer)
    checkpoints.Checkpointer(items, str(model_dir), max_to_keep=1).save(3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("visualize")
    config = load_config("ssd300_voc0712", {"model.width_multiplier": 0.125, "model.num_classes": 4,
                                            "data.class_names": CLASS_NAMES, "eval.batch_size": 2})
    model_dir = root / "model"
    save_config(config, model_dir)
    _save_checkpoint(config, model_dir)

    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    # smooth colours, so that drawn boxes are the only sharp edges
    Image.new("RGB", (120, 100), (90, 120, 150)).save(images / "annotated.png")
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)).save(images / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)).save(images / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (45, 65, 3), dtype=np.uint8)).save(images / "photo.jpg", quality=90)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "notes.txt").write_text("not an image, not picked from a folder")
    annotations = root / "Annotations"
    annotations.mkdir()
    xmin, ymin, xmax, ymax = GT_BOX
    (annotations / "annotated.xml").write_text(
        f"<annotation><object><name>{CLASS_NAMES[GT_LABEL - 1]}</name><difficult>0</difficult><bndbox>"
        f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        f"</annotation>")
    return {"root": root, "config": config, "model_dir": model_dir, "images": images,
            "annotations": annotations}


def _run(*flags):
    completed = subprocess.run([sys.executable, str(REPO / "visualize.py"), *flags],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def _rgb(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def drawn_by_checkpoint(setup):
    out = setup["root"] / "drawn"
    completed = _run(f"--images={setup['images']}", f"--model_dir={setup['model_dir']}",
                     f"--output_dir={out}", "--score_threshold=0.0",
                     f"--annotations_dir={setup['annotations']}")
    return out, completed


def test_checkpoint_detections_drawn_with_ground_truth_beside(setup, drawn_by_checkpoint):
    out, completed = drawn_by_checkpoint
    assert "wrote 4 images" in completed.stdout
    assert "skipped 1 unreadable" in completed.stdout
    assert "broken.jpg" in completed.stderr
    assert "visualize 5/5 (100.0%)" in completed.stderr  # progress counts skipped images too
    assert sorted(p.name for p in out.iterdir()) == ["annotated.png", "gray.png", "photo.jpg", "rgba.png"]

    for name, (width, height) in (("gray.png", (70, 50)), ("rgba.png", (30, 40)), ("photo.jpg", (65, 45))):
        with Image.open(out / name) as drawn:
            assert drawn.size == (width, height)  # no annotation: detections only, original size
        assert np.any(_rgb(out / name) != _rgb(setup["images"] / name))

    original = _rgb(setup["images"] / "annotated.png")
    drawn = _rgb(out / "annotated.png")
    height, width = original.shape[:2]
    assert drawn.shape[1] == 2 * width + 8  # detections | 8 px gap | ground truth
    bar = drawn.shape[0] - height  # the title bar above both panels
    assert bar >= 0
    detections_panel = drawn[bar:, :width]
    truth_panel = drawn[bar:, width + 8:]
    assert np.any(detections_panel != original)
    # the ground-truth box outline, in its class colour, at its continuous pixel edges
    color = class_colors(len(CLASS_NAMES) + 1)[GT_LABEL]
    xmin_edge, ymin_edge, xmax_edge, ymax_edge = GT_BOX[0] - 1, GT_BOX[1] - 1, GT_BOX[2], GT_BOX[3]
    middle_y = (ymin_edge + ymax_edge) // 2
    assert tuple(truth_panel[middle_y, xmin_edge]) == color
    assert tuple(truth_panel[middle_y, xmax_edge]) == color
    assert tuple(truth_panel[ymax_edge, (xmin_edge + xmax_edge) // 2]) == color
    assert tuple(truth_panel[middle_y, xmin_edge - 3]) == tuple(original[middle_y, xmin_edge - 3])
    assert tuple(truth_panel[middle_y, (xmin_edge + xmax_edge) // 2]) == tuple(original[middle_y, 50])


def test_saved_model_detections_equal_checkpoint_ones(setup, drawn_by_checkpoint):
    config, model_dir = setup["config"], setup["model_dir"]
    model = build_inference_model(config)
    checkpoints.restore_checkpoint(model, checkpoints.find_checkpoint(str(model_dir)), config)
    saved_model = setup["root"] / "saved_model"
    export_saved_model(model, config, str(saved_model))
    out = setup["root"] / "drawn_saved"
    names = ("gray.png", "rgba.png", "photo.jpg")
    completed = _run(f"--images={','.join(str(setup['images'] / n) for n in names)}",
                     f"--saved_model={saved_model}", f"--output_dir={out}", "--score_threshold=0.0")
    assert "wrote 3 images" in completed.stdout
    for name in names:
        saved, checkpoint = _rgb(out / name), _rgb(drawn_by_checkpoint[0] / name)
        assert saved.shape == checkpoint.shape == _rgb(setup["images"] / name).shape
        # the same boxes and labels: at most a pixel's rounding of an edge may differ
        assert np.mean(np.any(np.abs(saved - checkpoint) > 8, axis=-1)) < 0.01
