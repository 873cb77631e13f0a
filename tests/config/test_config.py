import json

import pytest

from ssd.config import loading as cfg
from ssd.modeling.anchors import generate_anchors


def test_reference_recipe_resolves_tf1_anchor_preset():
    config = cfg.load_config("ssd300_voc0712")
    a = config.anchors
    assert a.preset == "tf1"
    assert a.feature_map_sizes == [38, 19, 10, 5, 3, 1]
    assert a.boxes_per_location == [4, 6, 6, 6, 4, 4]
    assert a.scales == [0.1, 0.2, 0.375, 0.55, 0.725, 0.9]
    assert a.extra_scales == [0.1414, 0.2739, 0.4541, 0.6315, 0.8078, 0.9836]
    assert a.aspect_ratios[1] == [1.0, 2.0, 3.0, 0.5, 1.0 / 3.0]
    assert config.train.batch_size == 32 and config.train.max_steps == 120_000
    assert config.train.lr_boundaries == [500, 80_000, 100_000]
    assert config.train.lr_factors == [0.1, 1.0, 0.1, 0.01]


def test_ssd512_recipe_uses_caffe_sizes():
    a = cfg.load_config("ssd512_voc0712").anchors
    assert a.preset == "caffe"
    assert a.feature_map_sizes == [64, 32, 16, 8, 4, 2, 1]
    assert a.boxes_per_location == [4, 6, 6, 6, 6, 4, 4]
    assert a.min_sizes[0] == 35.84 and a.max_sizes[-1] == 537.6
    assert a.aspect_ratios[1] == [1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]


def test_caffe_preset_selectable_for_ssd300():
    a = cfg.load_config("ssd300_voc0712", {"anchors.preset": "caffe", "anchors.aspect_ratios": [],
                                            "anchors.scales": [], "anchors.extra_scales": []}).anchors
    assert a.min_sizes == [30.0, 60.0, 111.0, 162.0, 213.0, 264.0]
    assert a.max_sizes == [60.0, 111.0, 162.0, 213.0, 264.0, 315.0]


def test_json_round_trip_is_lossless(tmp_path):
    config = cfg.load_config("ssd300_voc0712", {"model.num_classes": 4, "data.class_names": ["a", "b", "c"],
                                                "train.seed": 7})
    again = cfg.from_json(cfg.to_json(config))
    assert again == config
    cfg.save_config(config, tmp_path)
    assert cfg.load_saved_config(tmp_path) == config


def test_overrides_apply_dotted_fields():
    config = cfg.load_config("ssd300_voc0712", {"train.learning_rate": 5e-4, "eval.metric": "voc12"})
    assert config.train.learning_rate == 5e-4
    assert config.eval.metric == "voc12"


@pytest.mark.parametrize("overrides, field", [
    ({"model.bogus": 1}, "model.bogus"),
    ({"nosection.x": 1}, "nosection"),
    ({"train.batch_size": "large"}, "train.batch_size"),
    ({"train.batch_size": 0}, "train.batch_size"),
    ({"model.extra_batch_norm": 1}, "model.extra_batch_norm"),
    ({"anchors.steps": [8, 16, 32, 30, 100, 300]}, "anchors.steps[3]"),
    ({"anchors.aspect_ratios": [[1, -2, 0.5]] + [[1, 2, 3, 0.5, 0.3]] * 3 + [[1, 2, 0.5]] * 2},
     "anchors.aspect_ratios[0][1]"),
    ({"model.num_classes": 5}, "model.num_classes"),
    ({"train.lr_factors": [0.1, 1.0]}, "train.lr_factors"),
    ({"model.input_size": 512}, "model.input_size"),
    ({"data.augmentation": "fancy"}, "data.augmentation"),
    ({"anchors.preset": "paper"}, "anchors.preset"),
    ({"model.architecture": "ssd400"}, "model.architecture"),
    ({"anchors.boxes_per_location": [4, 6, 6, 6, 4]}, "anchors.boxes_per_location"),
    ({"anchors.boxes_per_location": "many"}, "anchors.boxes_per_location"),
    ({"eval.metric": "voc10"}, "eval.metric"),
    ({"train.optimizer": "adagrad"}, "train.optimizer"),
    ({"train.bias_lr_multiplier": -1.0}, "train.bias_lr_multiplier"),
    ({"data.class_names": "imagenet"}, "data.class_names"),
    ({"loss.classification": "focal"}, "loss.classification"),
    ({"loss.hard_example_mining": "ohem"}, "loss.hard_example_mining"),
    ({"loss.miner_num_hard_examples": 0}, "loss.miner_num_hard_examples"),
    ({"loss.miner_iou_threshold": 0.0}, "loss.miner_iou_threshold"),
    ({"loss.miner_iou_threshold": 1.5}, "loss.miner_iou_threshold"),
    ({"loss.min_negatives_per_image": -1}, "loss.min_negatives_per_image"),
    ({"loss.negative_ratio": 0}, "loss.negative_ratio"),
    ({"anchors.preset": "caffe", "anchors.aspect_ratios": [], "anchors.scales": [], "anchors.extra_scales": [],
      "anchors.min_sizes": [0.5, 60, 111, 162, 213, 264]}, "anchors.min_sizes[0]"),
])
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load_config("ssd300_voc0712", overrides)
    assert field in str(info.value)


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(cfg.ConfigError, match="ssd300_voc0712"):
        cfg.load_config("ssd301")


def test_recipe_file_path_and_cli_override(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"model": {"num_classes": 3}, "data": {"class_names": ["x", "y"]}}))
    key, value = cfg.parse_override("train.batch_size=16")
    config = cfg.load_config(path, {key: value})
    assert config.model.num_classes == 3 and config.train.batch_size == 16
    assert cfg.parse_override("data.augmentation=tf1") == ("data.augmentation", "tf1")


def test_shape_fields_detect_architecture_changes():
    a = cfg.load_config("ssd300_voc0712")
    b = cfg.load_config("ssd300_voc0712", {"train.learning_rate": 0.01})
    c = cfg.load_config("ssd300_voc0712", {"model.width_multiplier": 0.5})
    assert cfg.shape_fields(a) == cfg.shape_fields(b)
    assert cfg.shape_fields(a) != cfg.shape_fields(c)


def test_shape_fields_cover_the_derived_boxes_per_location():
    a = cfg.load_config("ssd300_voc0712")
    fewer = [[1.0, 2.0, 0.5]] * 6
    b = cfg.load_config("ssd300_voc0712", {"anchors.aspect_ratios": fewer})
    assert cfg.shape_fields(a)["anchors.boxes_per_location"] == [4, 6, 6, 6, 4, 4]
    assert cfg.shape_fields(b)["anchors.boxes_per_location"] == [4] * 6


def test_boxes_per_location_is_derived_from_the_aspect_ratios():
    a = cfg.load_config("ssd300_voc0712", {"anchors.aspect_ratios": [[1.0]] * 3 + [[1.0, 2.0]] * 3}).anchors
    assert a.boxes_per_location == [2, 2, 2, 3, 3, 3]
    a.aspect_ratios[0] = [1.0, 2.0, 3.0, 0.5]
    assert a.boxes_per_location[0] == 5  # follows the ratios, cannot disagree with them
    assert "boxes_per_location" not in cfg.to_dict(cfg.load_config("ssd300_voc0712"))["anchors"]


def test_fields_of_no_version_are_refused_by_name(tmp_path):
    """No compatibility reading: a field this version does not have is an error naming it."""
    values = cfg.to_dict(cfg.load_config("ssd300_voc0712"))
    values["anchors"]["boxes_per_location"] = [4, 6, 6, 6, 4, 4]
    (tmp_path / cfg.CONFIG_FILENAME).write_text(json.dumps(values))
    with pytest.raises(cfg.ConfigError, match="anchors.boxes_per_location"):
        cfg.load_saved_config(tmp_path)
    with pytest.raises(cfg.ConfigError, match="anchors.preset"):
        cfg.load_config("ssd300_voc0712", {"anchors.preset": "seed"})


def test_recipes_are_listed_and_every_one_loads():
    names = cfg.recipe_names()
    assert names == sorted(p.stem for p in (cfg.recipe_dir()).glob("*.json"))
    assert {"ssd300_voc0712", "ssd512_voc0712", "ssd300_shapes_cpu", "ssdlite320_shapes_cpu",
            "ssdlite320_mobilenetv2_coco", "ssdlite320_mobilenetv2_voc"} <= set(names)
    for name in names:
        config = cfg.load_config(name)
        # VGG16 recipes use the SSD papers' anchors, SSDLite ones the TF Object Detection API's
        expected_presets = {"vgg16": ("tf1", "caffe"), "mobilenet_v2": ("tfod",)}
        assert config.anchors.preset in expected_presets[config.model.backbone], name


def test_recipe_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(cfg.ConfigError, match="list.json: expected a JSON object"):
        cfg.load_config(path)


# --- the COCO recipes (the Caffe release's ssd_coco.py) -------------------------------------------

def test_coco_class_list():
    classes = cfg.COCO_CLASSES
    assert len(classes) == 80 and len(set(classes)) == 80
    assert classes[:5] == ("person", "bicycle", "car", "motorcycle", "airplane")
    assert classes[-1] == "toothbrush"
    # COCO ids 44, 62, 72 (bottle, chair, tv) are labels 40, 57, 63: ids 12, 26, 29, 30, 45, 66,
    # 68, 69 and 71 are unused
    assert classes.index("bottle") == 39 and classes.index("chair") == 56 and classes.index("tv") == 62


@pytest.mark.parametrize("name, architecture, boxes, min_sizes, max_sizes", [
    ("ssd300_coco", "ssd300", 8732, [21, 45, 99, 153, 207, 261], [45, 99, 153, 207, 261, 315]),
    ("ssd512_coco", "ssd512", 24564, [20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8],
     [51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72]),
])
def test_coco_recipes(name, architecture, boxes, min_sizes, max_sizes):
    config = cfg.load_config(name)
    assert config.model.architecture == architecture
    assert config.model.num_classes == 81
    assert tuple(config.data.class_names) == cfg.COCO_CLASSES
    a = config.anchors
    assert a.preset == "caffe"
    assert a.min_sizes == min_sizes and a.max_sizes == max_sizes
    voc = cfg.load_config("ssd300_voc0712" if architecture == "ssd300" else "ssd512_voc0712",
                          {"anchors.preset": "caffe", "anchors.scales": [], "anchors.extra_scales": [],
                           "anchors.aspect_ratios": []}).anchors
    assert a.aspect_ratios == voc.aspect_ratios and a.steps == voc.steps
    assert generate_anchors(config).shape == (boxes, 4)
    t = config.train
    assert (t.batch_size, t.optimizer, t.momentum, t.learning_rate) == (32, "momentum", 0.9, 1e-3)
    assert t.max_steps == 400_000
    assert t.lr_boundaries == [500, 280_000, 360_000]  # the project's warm-up, then Caffe's steps
    assert t.lr_factors == [0.1, 1.0, 0.1, 0.01]
    assert t.bias_lr_multiplier == 2.0 and config.loss.decay_biases is False
    assert config.loss.weight_decay == 5e-4
    assert config.data.augmentation == "paper"
    e = config.eval
    assert (e.score_threshold, e.nms_iou_threshold, e.pre_nms_top_k, e.max_detections) == (0.01, 0.45, 400, 200)
    assert e.metric == "coco"


def test_coco_recipe_round_trips_with_the_names_themselves(tmp_path):
    config = cfg.load_config("ssd512_coco")
    assert json.loads(cfg.to_json(config))["data"]["class_names"] == list(cfg.COCO_CLASSES)
    cfg.save_config(config, tmp_path)
    assert cfg.load_saved_config(tmp_path) == config


def test_named_class_lists():
    assert cfg.load_config("ssd300_voc0712", {"data.class_names": "voc"}) == cfg.load_config("ssd300_voc0712")
    config = cfg.load_config("ssd300_voc0712", {"data.class_names": "coco", "model.num_classes": 81})
    assert config.data.class_names == list(cfg.COCO_CLASSES)


# --- Caffe's bias treatment -----------------------------------------------------------------------

def test_caffe_recipes_train_biases_at_2x_without_decay():
    for name in ("ssd512_voc0712", "ssd300_coco", "ssd512_coco"):
        config = cfg.load_config(name)
        assert config.anchors.preset == "caffe"
        assert config.train.bias_lr_multiplier == 2.0 and config.loss.decay_biases is False, name
    for name in ("ssd300_voc0712", "ssd300_shapes_cpu"):  # the TF1 reference's treatment
        config = cfg.load_config(name)
        assert config.train.bias_lr_multiplier == 1.0 and config.loss.decay_biases is True, name


# --- where a bad value came from -------------------------------------------------------------

def test_override_typo_names_the_override_not_the_recipe():
    overrides = cfg.Overrides()
    overrides.set("train.bach_size", 8, "--set train.bach_size=8")
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load_config("ssd300_voc0712", overrides)
    message = str(info.value)
    assert message.startswith("--set train.bach_size=8: train.bach_size: unknown field (known: batch_size,")
    assert "ssd300_voc0712.json" not in message
    # a plain mapping's override names itself
    with pytest.raises(cfg.ConfigError, match=r"^override train\.bach_size=8: train\.bach_size: unknown field"):
        cfg.load_config("ssd300_voc0712", {"train.bach_size": 8})


@pytest.mark.parametrize("field, value, origin, expected", [
    ("train.batch_size", -3, "--batch_size", "--batch_size: train.batch_size: must be >= 1, got -3"),
    ("train.batch_size", "big", "--set train.batch_size=big",
     "--set train.batch_size=big: train.batch_size: expected an integer, got 'big'"),
    ("train", 3, "--set train=3", "--set train=3: train: expected a mapping, got 3"),
    ("model.num_classes", 5, "--set model.num_classes=5",
     "--set model.num_classes=5: model.num_classes: is 5 but data.class_names has 20 names"),
])
def test_bad_override_names_its_origin(field, value, origin, expected):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load_config("ssd300_voc0712", cfg.Overrides({field: value}, {field: origin}))
    assert str(info.value).startswith(expected)


def test_errors_of_the_recipe_file_still_name_the_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"train": {"bach_size": 3}}))
    overrides = cfg.Overrides({"train.batch_size": 8}, {"train.batch_size": "--batch_size"})
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load_config(path, overrides)
    assert str(info.value).startswith(f"{path}: train.bach_size: unknown field")


def test_a_combination_neither_gives_alone_names_both(tmp_path):
    # the recipe alone is valid and so is each override's value; together the anchors no longer
    # fit the architecture, which the field of neither override names
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"anchors": {"preset": "caffe"}}))
    overrides = cfg.Overrides({"anchors.min_sizes": [30.0]}, {"anchors.min_sizes": "--set anchors.min_sizes=[30]"})
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load_config(path, overrides)
    assert str(info.value).startswith("--set anchors.min_sizes=[30]: anchors.min_sizes: needs 6 values")
    overrides = cfg.Overrides({"model.architecture": "ssd512", "model.input_size": 512},
                              {"model.architecture": "--set model.architecture=ssd512",
                               "model.input_size": "--set model.input_size=512"})
    path.write_text(json.dumps({"anchors": {"preset": "caffe", "min_sizes": [30.0, 60, 111, 162, 213, 264],
                                            "max_sizes": [60.0, 111, 162, 213, 264, 315]}}))
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load_config(path, overrides)
    assert str(info.value).startswith(f"{path} with --set model.architecture=ssd512, "
                                      f"--set model.input_size=512: anchors.")


def test_resume_names_the_override_and_the_saved_config(tmp_path):
    from ssd.config.resume import resolve_config
    cfg.save_config(cfg.load_config("ssd300_voc0712"), tmp_path)
    overrides = cfg.Overrides({"train.bach_size": 8}, {"train.bach_size": "--set train.bach_size=8"})
    with pytest.raises(cfg.ConfigError, match=r"^--set train\.bach_size=8: train\.bach_size: unknown"):
        resolve_config(tmp_path, "ssd300_voc0712", False, overrides)


@pytest.mark.slow
def test_train_app_names_the_set_and_the_flag(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    common = [sys.executable, str(root / "train.py"), f"--data_dir={tmp_path}/none-*",
              f"--model_dir={tmp_path}/model"]
    typo = subprocess.run(common + ["--set", "train.bach_size=8"], capture_output=True, text=True, timeout=120)
    assert typo.returncode == 1
    assert typo.stderr.startswith("train.py: error: --set train.bach_size=8: train.bach_size: unknown field")
    assert "ssd300_voc0712.json" not in typo.stderr
    flag = subprocess.run(common + ["--batch_size=0"], capture_output=True, text=True, timeout=120)
    assert flag.returncode == 1
    assert flag.stderr.startswith("train.py: error: --batch_size: train.batch_size: must be >= 1, got 0")


# --- backbones: model.backbone and data.preprocessing ----------------------------------------

def _ssdlite_values(**model):
    return {"model": {"architecture": "ssdlite320", "input_size": 320, "num_classes": 3, **model},
            "anchors": {"preset": "tfod"}, "data": {"class_names": ["a", "b"]}}


def test_ssdlite_recipes_resolve_backbone_preprocessing_and_anchors():
    for name, classes in (("ssdlite320_mobilenetv2_coco", 81), ("ssdlite320_mobilenetv2_voc", 21),
                          ("ssdlite320_shapes_cpu", 5)):
        config = cfg.load_config(name)
        assert (config.model.architecture, config.model.backbone) == ("ssdlite320", "mobilenet_v2")
        assert config.model.input_size == 320 and config.model.num_classes == classes
        assert config.data.preprocessing == "tf_rgb_unit"
        assert config.anchors.feature_map_sizes == [20, 10, 5, 3, 2, 1]
        assert config.anchors.boxes_per_location == [3, 6, 6, 6, 6, 6]
    coco = cfg.load_config("ssdlite320_mobilenetv2_coco")
    assert len(coco.data.class_names) == 80 and coco.eval.metric == "coco"


def test_vgg_recipes_get_vgg16_and_the_caffe_convention():
    for name in ("ssd300_voc0712", "ssd512_voc0712", "ssd300_coco", "ssd300_shapes_cpu"):
        config = cfg.load_config(name)
        assert config.model.backbone == "vgg16"
        assert config.data.preprocessing == "caffe_bgr_mean"


def test_backbone_and_preprocessing_are_derived_when_left_out():
    config = cfg.from_dict(_ssdlite_values())
    assert config.model.backbone == "mobilenet_v2"
    assert config.data.preprocessing == "tf_rgb_unit"
    # an override of the architecture alone is a whole SSDLite config
    config = cfg.load_config("ssd300_voc0712", {"model.architecture": "ssdlite320",
                                                "model.input_size": 320, "anchors.preset": "tfod"})
    assert (config.model.backbone, config.data.preprocessing) == ("mobilenet_v2", "tf_rgb_unit")


def test_ssdlite_json_round_trip_is_lossless():
    config = cfg.load_config("ssdlite320_shapes_cpu", {"train.seed": 3})
    text = cfg.to_json(config)
    assert json.loads(text)["model"]["backbone"] == "mobilenet_v2"
    assert json.loads(text)["data"]["preprocessing"] == "tf_rgb_unit"
    assert cfg.from_json(text) == config


def test_config_saved_before_the_backbone_fields_loads_as_vgg16(tmp_path):
    config = cfg.load_config("ssd300_voc0712", {"train.seed": 7})
    old = cfg.to_dict(config)
    del old["model"]["backbone"], old["data"]["preprocessing"]
    (tmp_path / cfg.CONFIG_FILENAME).write_text(json.dumps(old))
    assert cfg.load_saved_config(tmp_path) == config


@pytest.mark.parametrize("values, field, message", [
    (_ssdlite_values(backbone="vgg16"), "model.backbone",
     "model.architecture ssdlite320 is built on mobilenet_v2, got 'vgg16'"),
    ({"model": {"backbone": "mobilenet_v2"}}, "model.backbone",
     "model.architecture ssd300 is built on vgg16, got 'mobilenet_v2'"),
    ({"model": {"backbone": "resnet50"}}, "model.backbone", "must be 'vgg16' or 'mobilenet_v2'"),
    (_ssdlite_values(extra_batch_norm=True), "model.extra_batch_norm", "is a vgg16 option"),
    ({**_ssdlite_values(), "data": {"class_names": ["a", "b"], "preprocessing": "caffe_bgr_mean"}},
     "data.preprocessing", "model.backbone mobilenet_v2 takes 'tf_rgb_unit' inputs"),
    ({"data": {"preprocessing": "tf_rgb_unit"}}, "data.preprocessing",
     "model.backbone vgg16 takes 'caffe_bgr_mean' inputs"),
    ({"data": {"preprocessing": "rgb"}}, "data.preprocessing", "must be 'caffe_bgr_mean' or"),
    ({**_ssdlite_values(), "anchors": {"preset": "tf1"}}, "anchors.scales",
     "the 'tf1' preset has no table for ssdlite320"),
    ({**_ssdlite_values(), "anchors": {"preset": "caffe"}}, "anchors.min_sizes",
     "the 'caffe' preset has no table for ssdlite320"),
    ({**_ssdlite_values(input_size=300)}, "model.input_size", "ssdlite320 takes 320x320 inputs"),
])
def test_backbone_errors_name_the_field(values, field, message):
    with pytest.raises(cfg.ConfigError) as error:
        cfg.from_dict(values)
    assert str(error.value).startswith(f"{field}: ")
    assert message in str(error.value)


def test_preprocessing_override_against_the_backbone_names_the_override():
    with pytest.raises(cfg.ConfigError, match=r"^override data.preprocessing=\"caffe_bgr_mean\": "
                                              r"data.preprocessing: model.backbone mobilenet_v2"):
        cfg.load_config("ssdlite320_shapes_cpu", {"data.preprocessing": "caffe_bgr_mean"})


def test_shape_fields_include_the_backbone():
    vgg = cfg.shape_fields(cfg.load_config("ssd300_voc0712"))
    lite = cfg.shape_fields(cfg.load_config("ssdlite320_mobilenetv2_voc"))
    assert vgg["model.backbone"] == "vgg16" and lite["model.backbone"] == "mobilenet_v2"
    assert lite["anchors.boxes_per_location"] == [3, 6, 6, 6, 6, 6]


def test_resuming_a_vgg_model_as_ssdlite_is_refused(tmp_path):
    from ssd.config.resume import resolve_config

    cfg.save_config(cfg.load_config("ssd300_voc0712"), tmp_path)
    with pytest.raises(cfg.ConfigError, match="^model.architecture: .* trained with "
                                              "model.architecture='ssd300'"):
        resolve_config(tmp_path, "ssdlite320_mobilenetv2_voc", True, {})


def test_num_classes_follows_the_class_list():
    recipes = {name: json.loads(cfg.recipe_path(name).read_text()) for name in cfg.recipe_names()}
    assert all("num_classes" not in values.get("model", {}) for values in recipes.values())
    assert cfg.load_config("ssd300_coco").model.num_classes == 81
    assert cfg.load_config("ssd300_voc0712").model.num_classes == 21
    assert cfg.load_config("ssd300_shapes_cpu").model.num_classes == 5
    pets = cfg.load_config("ssd300_coco", {"data.class_names": ["cat", "dog"]})
    assert pets.model.num_classes == 3
    # a saved config states both; a new class list over it still sets the count
    resumed = cfg.config_from(cfg.to_dict(pets), {"data.class_names": ["cat", "dog", "bird"]}, "saved")
    assert resumed.model.num_classes == 4
    assert cfg.from_json(cfg.to_json(pets)).model.num_classes == 3


def test_a_class_count_against_the_class_list_is_refused_with_the_fix():
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load_config("ssd300_voc0712", {"data.class_names": ["cat", "dog"], "model.num_classes": 21})
    message = str(info.value)
    assert message.startswith("override model.num_classes=21: model.num_classes: is 21")
    assert "follows the class list" in message


# --- Caffe's Normalize decay; the TF Object Detection API's SSDLite recipe -------------------------

def test_the_conv4_3_scale_decays_at_1x_in_caffe_recipes_and_01x_in_the_tf1_ones():
    for name in cfg.recipe_names():
        config = cfg.load_config(name)
        if config.anchors.preset == "caffe":  # Caffe's Normalize layer: no decay_mult, i.e. 1
            assert config.loss.norm_scale_decay_multiplier == 1.0, name
        elif config.anchors.preset == "tf1":  # the TF1 original's l2_loss(scale) * 0.1
            assert config.loss.norm_scale_decay_multiplier == 0.1, name


def test_tfod_recipe_is_the_apis_ssdlite_mobilenet_v2_coco():
    c = cfg.load_config("ssdlite300_mobilenetv2_coco_tfod")
    assert (c.model.architecture, c.model.backbone, c.model.input_size) == ("ssdlite300", "mobilenet_v2", 300)
    assert c.model.num_classes == 81 and c.data.class_names == list(cfg.COCO_CLASSES)
    assert c.model.batch_norm_momentum == 0.9997 and c.model.width_multiplier == 1.0
    assert c.anchors.preset == "tfod" and c.anchors.lowest_square_first and not c.anchors.clip
    assert c.anchors.aspect_ratios[0] == [2.0, 0.5]
    assert c.anchors.aspect_ratios[1:] == [[1.0, 2.0, 0.5, 3.0, 0.3333]] * 5
    assert c.matching.positive_threshold == c.matching.negative_threshold == 0.5
    assert c.matching.variances == [0.1, 0.1, 0.2, 0.2]  # faster_rcnn_box_coder 10, 10, 5, 5
    assert (c.loss.weight_decay, c.loss.decay_biases, c.loss.decay_backbone_depthwise_kernels) == \
        (4e-5, False, False)
    assert c.loss.negative_ratio == 3.0
    # weighted_sigmoid loss, score_converter SIGMOID; hard_example_miner 3000 / 0.99 / 3 per image
    assert (c.loss.classification, c.loss.hard_example_mining) == ("sigmoid", "tfod")
    assert (c.loss.miner_num_hard_examples, c.loss.miner_iou_threshold,
            c.loss.min_negatives_per_image) == (3000, 0.99, 3)
    assert (c.data.augmentation, c.data.flip_probability, c.data.preprocessing) == ("tfod", 0.5, "tf_rgb_unit")
    t = c.train
    assert (t.batch_size, t.max_steps, t.optimizer) == (24, 200_000, "rmsprop")
    assert (t.momentum, t.rmsprop_decay, t.rmsprop_epsilon) == (0.9, 0.9, 1.0)
    assert (t.learning_rate, t.lr_schedule, t.lr_decay_steps, t.lr_decay_factor,
            t.lr_decay_staircase, t.lr_floor) == (0.004, "exponential", 800_720, 0.95, True, 0.0)
    e = c.eval
    assert (e.score_threshold, e.nms_iou_threshold, e.max_detections, e.metric) == (1e-8, 0.6, 100, "coco")
    # no cap before NMS: every default box is a candidate, as the API's batch_non_max_suppression
    assert e.pre_nms_top_k >= len(generate_anchors(c)) == 1917


def test_new_fields_keep_the_earlier_recipes_as_they_were():
    for name in cfg.recipe_names():
        if name == "ssdlite300_mobilenetv2_coco_tfod":
            continue
        c = cfg.load_config(name)
        assert c.data.augmentation in ("paper", "tf1"), name
        assert (c.train.optimizer, c.train.lr_schedule) != ("rmsprop", "exponential"), name
        assert c.train.lr_schedule == "piecewise" and not c.anchors.lowest_square_first, name
        assert c.loss.decay_backbone_depthwise_kernels, name
    assert generate_anchors(cfg.load_config("ssdlite320_mobilenetv2_coco")).shape == (2034, 4)


@pytest.mark.parametrize("values, message", [
    ({"loss.decay_backbone_depthwise_kernels": False},
     "loss.decay_backbone_depthwise_kernels: is a mobilenet_v2 option"),
    ({"data.augmentation": "tfodd"}, "data.augmentation: must be"),
    ({"train.optimizer": "rmsprop", "train.bias_lr_multiplier": 2.0}, "train.bias_lr_multiplier"),
])
def test_new_fields_are_validated_by_name(values, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load_config("ssd300_voc0712", values)


def test_loss_defaults_keep_ssd_and_name_the_tfod_miner_settings():
    """Every recipe but the API's own keeps SSD's softmax loss and miner; the "tfod" miner's
    defaults are the TF Object Detection API's ssdlite_mobilenet_v2_coco settings."""
    for name in cfg.recipe_names():
        if name == "ssdlite300_mobilenetv2_coco_tfod":
            continue
        loss = cfg.load_config(name).loss
        assert (loss.classification, loss.hard_example_mining) == ("softmax", "ssd"), name
    loss = cfg.load_config("ssdlite320_shapes_cpu", {"loss.classification": "sigmoid",
                                                      "loss.hard_example_mining": "tfod"}).loss
    assert (loss.miner_num_hard_examples, loss.miner_iou_threshold, loss.negative_ratio,
            loss.min_negatives_per_image) == (3000, 0.99, 3.0, 3)
