"""Fine-tuning from a detection checkpoint (ssd.engine.fine_tune, train.py --fine_tune_checkpoint).

Tiny models: the shapes recipe at width 0.05 (every layer at its 8-channel minimum). A source
model gets distinct values in every variable and, in its class heads, a value per output channel
that names the channel, so the test reads off which source channel each target channel holds.
"""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ssd.config.loading import load_config, load_saved_config, save_config
from ssd.engine import fine_tune as ft
from ssd.engine.optimizers import make_optimizer
from ssd.inference.detector import build_inference_model
from ssd.modeling.checkpoints import Checkpointer, training_items
from tests.apps.test_train import CLASSES as RECORD_CLASSES
from tests.apps.test_train import records  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ["circle", "square", "triangle", "star"]
HEADS = 6


def tiny(classes, recipe="ssd300_shapes_cpu", **overrides):
    values = {"model.width_multiplier": 0.05, "model.num_classes": len(classes) + 1,
              "data.class_names": list(classes)}
    values.update(overrides)
    return load_config(recipe, values)


def save_model_dir(model, config, directory, step=7):
    """A model directory as train.py leaves it: config.json and a training checkpoint (with the
    optimizer's slots) written by the training loop's Checkpointer."""
    save_config(config, directory)
    global_step = tf.Variable(step, dtype=tf.int64, trainable=False)
    optimizer = make_optimizer(config.train, global_step)
    optimizer.build(model.trainable_variables)
    return Checkpointer(training_items(model, global_step, optimizer), str(directory), 2).save(step)


def class_channel_value(head, channel):
    return 1000.0 * (head + 1) + channel


def marked_source(config, directory):
    """A model whose variables all hold distinct values; class head channel c of cls_i holds
    class_channel_value(i, c) in its bias and every kernel entry."""
    model = build_inference_model(config)
    rng = np.random.default_rng(1)
    for variable in model.weights:
        variable.assign(rng.uniform(-1, 1, variable.shape).astype(np.float32) + 5.0)
    for head in range(HEADS):
        layer = model.get_layer(f"cls_{head}")
        values = np.array([class_channel_value(head, c) for c in range(layer.bias.shape[0])], np.float32)
        layer.bias.assign(values)
        layer.kernel.assign(np.broadcast_to(values, layer.kernel.shape))
    return model, save_model_dir(model, config, directory)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    directory = tmp_path_factory.mktemp("source")
    config = tiny(SHAPES)
    model, checkpoint = marked_source(config, directory)
    return config, model, str(directory), checkpoint


def weights_of(model):
    return {v.path: v.numpy().copy() for v in model.weights}


# --- (a) names ---------------------------------------------------------------------------------

def test_names_match_ignoring_case_spaces_and_underscores():
    assert ft.normalize_class_name("Potted_Plant") == ft.normalize_class_name("potted plant") == "pottedplant"
    assert ft.match_classes(["Dining Table", "TV"], ["diningtable", "tv"]) == {0: 0, 1: 1, 2: 2}
    assert ft.match_classes(["a", "b"], ["c"]) == {0: 0}


@pytest.mark.parametrize("coco, voc", [("airplane", "aeroplane"), ("motorcycle", "motorbike"),
                                       ("couch", "sofa"), ("tv", "tvmonitor"),
                                       ("dining table", "diningtable"), ("potted plant", "pottedplant")])
def test_synonyms_both_ways(coco, voc):
    assert ft.match_classes(["person", coco], [voc]) == {0: 0, 1: 2}
    assert ft.match_classes(["person", voc], [coco.upper()]) == {0: 0, 1: 2}


def test_exact_match_wins_over_a_synonym_and_a_source_class_serves_once():
    assert ft.match_classes(["tv", "tvmonitor"], ["tvmonitor"]) == {0: 0, 1: 2}
    assert ft.match_classes(["tv"], ["tvmonitor", "tv"]) == {0: 0, 2: 1}


def test_coco_to_voc_copies_all_twenty_classes_and_the_recipe_fits_the_coco_one():
    coco, voc = load_config("ssd300_coco"), load_config("ssd300_voc0712_from_coco")
    mapping = ft.match_classes(coco.data.class_names, voc.data.class_names)
    assert sorted(mapping) == list(range(21))
    assert coco.data.class_names[mapping[18] - 1] == "couch"  # sofa
    assert ft.check_compatible(coco, voc, "detection", "coco") == []  # same default boxes: no warning


def test_channel_pairs_per_box():
    target, source = ft.class_channel_pairs(2, 5, 3, {0: 0, 1: 4, 2: 1})
    assert target.tolist() == [0, 1, 2, 3, 4, 5]
    assert source.tolist() == [0, 4, 1, 5, 9, 6]


# --- (b) initializing a model ------------------------------------------------------------------------

def test_detection_copies_shared_classes_per_box_and_keeps_the_others_fresh(source):
    source_config, source_model, directory, checkpoint = source
    target_classes = ["Star", "ring", "CIRCLE"]  # reordered, renamed by case, one new class
    config = tiny(target_classes)
    model = build_inference_model(config)
    fresh = weights_of(model)
    report = ft.initialize_from_checkpoint(model, config, directory)

    assert report.checkpoint == checkpoint and report.step == 7
    assert report.copied_classes == [("background", "background"), ("star", "Star"), ("circle", "CIRCLE")]
    assert report.fresh_classes == ["ring"]
    assert report.left_initialized == []
    mapping = {0: 0, 1: 4, 3: 1}  # target label -> source label
    for head in range(HEADS):
        layer = model.get_layer(f"cls_{head}")
        boxes = layer.bias.shape[0] // 4
        assert boxes == source_config.anchors.boxes_per_location[head]
        bias, kernel = layer.bias.numpy(), layer.kernel.numpy()
        for box in range(boxes):
            for label in range(4):
                channel = box * 4 + label
                if label in mapping:
                    expected = class_channel_value(head, box * 5 + mapping[label])
                    assert bias[channel] == expected and np.all(kernel[..., channel] == expected)
                else:
                    np.testing.assert_array_equal(bias[channel], fresh[f"cls_{head}/bias"][channel])
                    np.testing.assert_array_equal(kernel[..., channel], fresh[f"cls_{head}/kernel"][..., channel])
    for name in ["conv1_1", "conv4_3_norm", "fc7", "conv8_1", "conv8_1_bn", "conv11_2", "loc_0", "loc_5"]:
        for mine, theirs in zip(model.get_layer(name).weights, source_model.get_layer(name).weights):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    assert report.restored[ft.BOX_HEADS] == [f"loc_{i}" for i in range(HEADS)]
    assert "conv8_1_bn" in report.restored[ft.EXTRA_LAYERS]
    lines = report.log_lines()
    assert "star -> Star" in lines[1] and "circle -> CIRCLE" in lines[1]
    assert lines[2].endswith("initialized fresh: ring")


def test_detection_from_a_checkpoint_prefix(source):
    _, _, _, checkpoint = source
    config = tiny(["square"])
    model = build_inference_model(config)
    report = ft.initialize_from_checkpoint(model, config, checkpoint)
    assert report.copied_classes == [("background", "background"), ("square", "square")]
    assert model.get_layer("cls_0").bias.numpy()[3] == class_channel_value(0, 1 * 5 + 2)


def test_backbone_only(source):
    _, source_model, directory, _ = source
    config = tiny(SHAPES)  # same classes: only the checkpoint type keeps the heads fresh
    model = build_inference_model(config)
    fresh = weights_of(model)
    report = ft.initialize_from_checkpoint(model, config, directory, "backbone")
    assert list(report.restored) == [ft.BACKBONE_LAYERS]
    assert "fc7" in report.restored[ft.BACKBONE_LAYERS] and "conv4_3_norm" in report.restored[ft.BACKBONE_LAYERS]
    assert report.copied_classes == [] and report.fresh_classes == []
    for layer in model.layers:
        for variable, theirs in zip(layer.weights, source_model.get_layer(layer.name).weights):
            if ft.layer_group(layer.name, config) == ft.BACKBONE_LAYERS:
                np.testing.assert_array_equal(variable.numpy(), theirs.numpy(), err_msg=variable.path)
            else:
                np.testing.assert_array_equal(variable.numpy(), fresh[variable.path], err_msg=variable.path)
                assert layer.name in report.left_initialized


def test_backbone_only_accepts_another_box_layout(source):
    _, _, directory, _ = source
    config = tiny(SHAPES, **{"anchors.aspect_ratios": [[2.0]] * 6})
    ft.initialize_from_checkpoint(build_inference_model(config), config, directory, "backbone")
    with pytest.raises(ft.FineTuneError, match="boxes_per_location"):
        ft.initialize_from_checkpoint(build_inference_model(config), config, directory)


# --- errors -----------------------------------------------------------------------------------------

def _changed(config, section, field, value):
    changed = copy.deepcopy(config)
    setattr(getattr(changed, section), field, value)
    return changed


@pytest.mark.parametrize("section, field, value", [
    ("model", "architecture", "ssd512"), ("model", "input_size", 512), ("model", "backbone", "mobilenet_v2"),
    ("model", "width_multiplier", 0.25), ("model", "extra_batch_norm", False),
    ("anchors", "aspect_ratios", [[2.0]] * 6)])
def test_refuses_another_model_naming_both_sides(source, section, field, value):
    source_config = source[0]
    target = _changed(source_config, section, field, value)
    with pytest.raises(ft.FineTuneError) as error:
        ft.check_compatible(source_config, target, "detection", "src/ckpt-7")
    message = str(error.value)
    shown = "anchors.boxes_per_location" if field == "aspect_ratios" else f"{section}.{field}"
    assert "\n" not in message and "src/ckpt-7" in message and shown in message
    assert repr(ft._field(source_config, shown)) in message and repr(ft._field(target, shown)) in message


def test_other_anchor_sizes_warn(source):
    source_config = source[0]
    target = _changed(source_config, "anchors", "scales", [s * 1.1 for s in source_config.anchors.scales])
    (warning,) = ft.check_compatible(source_config, target, "detection", "x")
    assert "anchors.scales" in warning and "box heads" in warning


def test_missing_paths_and_directories_without_a_model(source, tmp_path):
    config = tiny(SHAPES)
    model = build_inference_model(config)
    with pytest.raises(ft.FineTuneError, match="no such model directory or checkpoint"):
        ft.initialize_from_checkpoint(model, config, str(tmp_path / "nowhere"))
    with pytest.raises(ft.FineTuneError, match="lists no checkpoint"):
        ft.initialize_from_checkpoint(model, config, str(tmp_path))
    # a checkpoint outside a model directory: its config is unknown
    bare = tmp_path / "bare"
    bare.mkdir()
    prefix = tf.train.Checkpoint(model=model).write(str(bare / "ckpt-1"))
    with pytest.raises(ft.FineTuneError, match="has no config.json"):
        ft.initialize_from_checkpoint(model, config, prefix)


def test_a_checkpoint_that_does_not_fit_its_own_config(source, tmp_path):
    source_config, source_model, _, _ = source
    wrong = tmp_path / "wrong"
    save_model_dir(source_model, source_config, wrong)
    save_config(tiny(SHAPES, **{"model.width_multiplier": 0.25}), wrong)  # lies about the model
    config = tiny(SHAPES, **{"model.width_multiplier": 0.25})
    with pytest.raises(ft.FineTuneError, match="does not fit"):
        ft.initialize_from_checkpoint(build_inference_model(config), config, str(wrong))


# --- (c) train.py -----------------------------------------------------------------------------------

def _train(records, model_dir, *args):  # noqa: F811
    classes = ",".join(f'"{c}"' for c in RECORD_CLASSES + ["star"])
    command = [sys.executable, str(ROOT / "train.py"), "--config=ssd300_shapes_cpu",
               f"--data_dir={records}", f"--model_dir={model_dir}", "--batch_size=2",
               "--set", "model.width_multiplier=0.05", "--set", "model.num_classes=5",
               "--set", f"data.class_names=[{classes}]", "--set", "data.shuffle_buffer=16",
               "--set", "train.log_step_count_steps=1", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_train_py_fine_tunes_on_a_fresh_start_and_resumes_without_it(records, tmp_path):  # noqa: F811
    source_dir = tmp_path / "source"
    # the records name labels 1..3 circle, square, triangle; the source knows two of them
    # (freshly initialized weights: the marked ones are too large to train on)
    config = tiny(["square", "Circle", "hexagon"])
    save_model_dir(build_inference_model(config), config, source_dir)
    model_dir = tmp_path / "model"
    fine_tune = f"--fine_tune_checkpoint={source_dir}"

    first = _train(records, model_dir, fine_tune, "--pretrained=imagenet", "--max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    log = first.stderr
    assert "--pretrained=imagenet is not applied: --fine_tune_checkpoint restores" in log
    assert f"fine-tune checkpoint {source_dir}/ckpt-7 (step 7, type detection): restored backbone: conv1_1" in log
    assert ("fine-tune classes copied (source -> target): background -> background, "
            "Circle -> circle, square -> square") in log
    assert "fine-tune classes initialized fresh: triangle, star" in log
    assert "training finished at step 2" in log
    assert load_saved_config(model_dir).data.class_names == RECORD_CLASSES + ["star"]

    again = _train(records, model_dir, fine_tune, "--max_steps=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"--fine_tune_checkpoint={source_dir} is not used (it initializes the first start only)" in again.stderr
    assert "fine-tune classes copied" not in again.stderr
    assert "training finished at step 3" in again.stderr


def test_train_py_refuses_a_missing_fine_tune_checkpoint(records, tmp_path):  # noqa: F811
    model_dir = tmp_path / "model"
    result = _train(records, model_dir, f"--fine_tune_checkpoint={tmp_path / 'nowhere'}", "--max_steps=1")
    assert result.returncode != 0
    assert f"train.py: error: fine-tune checkpoint {tmp_path / 'nowhere'}: no such model directory" in result.stderr
    assert not (model_dir / "config.json").exists()  # the directory stays free for a corrected command


def test_ssdlite_layers_and_class_channels(tmp_path):
    def lite(classes):
        return tiny(classes, "ssdlite320_shapes_cpu", **{"model.width_multiplier": 0.35})

    source_config = lite(SHAPES)
    source_model = build_inference_model(source_config)
    groups = {layer.name: ft.layer_group(layer.name, source_config) for layer in source_model.layers
              if layer.weights}
    assert groups["Conv1"] == groups["block_13_expand"] == groups["Conv_1_bn"] == ft.BACKBONE_LAYERS
    assert groups["extra_1_1x1"] == groups["extra_4_pw_bn"] == ft.EXTRA_LAYERS
    assert groups["box_head_0_dw"] == groups["box_head_5_pw"] == ft.BOX_HEADS
    assert groups["cls_head_0_dw"] == groups["cls_head_0_dw_bn"] == ft.CLASS_HEADS
    assert groups["cls_head_3_pw"] == ft.CLASS_OUTPUTS
    head = source_model.get_layer("cls_head_0_pw")
    head.bias.assign(np.arange(head.bias.shape[0], dtype=np.float32))
    save_model_dir(source_model, source_config, tmp_path)

    config = lite(["triangle", "moon"])
    model = build_inference_model(config)
    report = ft.initialize_from_checkpoint(model, config, str(tmp_path))
    assert report.fresh_classes == ["moon"]
    bias = model.get_layer("cls_head_0_pw").bias.numpy()
    for box in range(config.anchors.boxes_per_location[0]):
        assert bias[box * 3] == box * 5 and bias[box * 3 + 1] == box * 5 + 3
    np.testing.assert_array_equal(model.get_layer("cls_head_0_dw").weights[0].numpy(),
                                  source_model.get_layer("cls_head_0_dw").weights[0].numpy())
