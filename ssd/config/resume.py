"""The config of a training run that may resume from a model directory.

A model directory holds the config it was trained with (`config.json`). Running again resumes:
the saved config is the base unless a recipe is given explicitly, the overrides apply on top,
changes that keep the variable shapes are allowed (and listed, to be logged), and a change of a
shape field (`ssd.config.loading.shape_fields`) is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ssd.config import loading as config_lib

Changes = dict[str, tuple[Any, Any]]


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested sections to dotted field names."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(old: config_lib.Config, new: config_lib.Config) -> Changes:
    """{field: (old value, new value)} for every field that differs."""
    before, after = flatten(config_lib.to_dict(old)), flatten(config_lib.to_dict(new))
    return {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)}


def check_shapes_unchanged(saved: config_lib.Config, config: config_lib.Config,
                           model_dir: str | os.PathLike) -> None:
    """Raises ConfigError naming the first shape field `config` changes from `saved`."""
    old_shapes, new_shapes = config_lib.shape_fields(saved), config_lib.shape_fields(config)
    for field, old_value in old_shapes.items():
        if new_shapes[field] != old_value:
            raise config_lib.ConfigError(
                f"{field}: {model_dir} holds a model trained with {field}={old_value!r}; this run "
                f"asks for {new_shapes[field]!r}, which changes the model's variable shapes. Keep "
                f"{field} unchanged to resume, or use a new --model_dir.")


def resolve_config(model_dir: str | os.PathLike, recipe: str, recipe_given: bool,
                   overrides: Mapping[str, Any]) -> tuple[config_lib.Config, Changes]:
    """The run's config and the changes against the config saved in model_dir (empty if none).

    `recipe` is the base on a fresh start, or when `recipe_given` (named explicitly by the user);
    otherwise the saved config is. `overrides` may be a `config.Overrides`, whose origins errors
    name. Raises ConfigError when a resumed run would change a field that fixes variable shapes.
    """
    saved_path = Path(model_dir) / config_lib.CONFIG_FILENAME
    saved = config_lib.load_saved_config(model_dir) if saved_path.exists() else None
    if saved is not None and not recipe_given:
        config = config_lib.config_from(config_lib.to_dict(saved), overrides, str(saved_path))
    else:
        config = config_lib.load_config(recipe, overrides)
    if saved is None:
        return config, {}
    check_shapes_unchanged(saved, config, model_dir)
    return config, config_changes(saved, config)
