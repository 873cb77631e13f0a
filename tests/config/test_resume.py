"""Which config a training run uses when its model directory already holds one."""


import pytest

from ssd.config import loading as cfg
from ssd.config.resume import config_changes, flatten, resolve_config

TINY = {"model.width_multiplier": 0.125, "model.num_classes": 4, "data.class_names": ["a", "b", "c"]}


def test_flatten_gives_dotted_names():
    assert flatten({"a": {"b": 1, "c": {"d": [2, 3]}}, "e": None}) == {"a.b": 1, "a.c.d": [2, 3], "e": None}


def test_fresh_start_uses_the_recipe_and_reports_no_changes(tmp_path):
    config, changes = resolve_config(tmp_path / "new", "ssd300_voc0712", False, {"train.max_steps": 9})
    assert config == cfg.load_config("ssd300_voc0712", {"train.max_steps": 9})
    assert changes == {}


def test_resume_lists_every_changed_field(tmp_path):
    saved = cfg.load_config("ssd300_voc0712", TINY)
    cfg.save_config(saved, tmp_path)
    config, changes = resolve_config(tmp_path, "ignored_when_not_given", False,
                                     {"train.learning_rate": 0.01, "data.augmentation": "none"})
    assert changes == {"train.learning_rate": (0.001, 0.01), "data.augmentation": ("paper", "none")}
    assert config_changes(saved, config) == changes
    assert config.model.num_classes == 4


def test_resume_refuses_a_change_of_the_derived_boxes_per_location(tmp_path):
    cfg.save_config(cfg.load_config("ssd300_voc0712", TINY), tmp_path)
    with pytest.raises(cfg.ConfigError) as info:
        resolve_config(tmp_path, "ssd300_voc0712", False, {"anchors.aspect_ratios": [[1.0, 2.0, 0.5]] * 6})
    message = str(info.value)
    assert message.startswith("anchors.boxes_per_location:")
    assert "[4, 6, 6, 6, 4, 4]" in message and "[4, 4, 4, 4, 4, 4]" in message
    assert "changes the model's variable shapes" in message
