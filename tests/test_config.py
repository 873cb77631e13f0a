import json

import pytest

from ssd import config as cfg


def test_seed_recipe_resolves_seed_anchor_preset():
    config = cfg.load_config("ssd300_voc0712")
    a = config.anchors
    assert a.preset == "seed"
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
    ({"anchors.boxes_per_location": [4, 4, 6, 6, 4, 4]}, "anchors.boxes_per_location[1]"),
    ({"model.num_classes": 5}, "model.num_classes"),
    ({"train.lr_factors": [0.1, 1.0]}, "train.lr_factors"),
    ({"model.input_size": 512}, "model.input_size"),
    ({"data.augmentation": "fancy"}, "data.augmentation"),
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
    assert cfg.parse_override("data.augmentation=seed") == ("data.augmentation", "seed")


def test_shape_fields_detect_architecture_changes():
    a = cfg.load_config("ssd300_voc0712")
    b = cfg.load_config("ssd300_voc0712", {"train.learning_rate": 0.01})
    c = cfg.load_config("ssd300_voc0712", {"model.width_multiplier": 0.5})
    assert cfg.shape_fields(a) == cfg.shape_fields(b)
    assert cfg.shape_fields(a) != cfg.shape_fields(c)
