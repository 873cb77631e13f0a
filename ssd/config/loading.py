"""Loading a configuration: recipes, anchor presets, dotted overrides, JSON round trip.

Recipes are data: each `configs/<name>.json` gives only the fields it changes from the defaults
of `ssd.config.schema`. The top-level `configs/` directory of the source tree is the one place
they are written; setup.py installs it as the package data `ssd/configs/`, so a recipe loads by
name from a source checkout, an editable install and a regular install alike.

`load_config` resolves a recipe (anchor presets included), applies dotted overrides, validates
every field (`ssd.config.validation`) and returns a `Config`; `to_json` / `from_json` round-trip
it losslessly, which is how the trainer saves the resolved config into the model directory.
A recipe may name a
class list instead of listing it (`"data": {"class_names": "coco"}`, see
`config_schema.NAMED_CLASS_LISTS`); the resolved config holds the names themselves.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping


from ssd.config.anchor_presets import preset_values
from ssd.config.architectures import BACKBONE_PREPROCESSING, ARCHITECTURES
from ssd.config.schema import (ANCHOR_PRESETS, AUGMENTATIONS, COCO_CLASSES, EVAL_METRICS,
                               NAMED_CLASS_LISTS, OPTIMIZERS, TF1, TFOD, VOC_CLASSES, AnchorConfig,
                               Config, ConfigError, DataConfig, EvalConfig, LossConfig,
                               MatchingConfig, ModelConfig, TrainConfig, shape_fields)
from ssd.config.validation import validate

__all__ = [
    "ANCHOR_PRESETS", "AUGMENTATIONS", "COCO_CLASSES", "EVAL_METRICS", "NAMED_CLASS_LISTS",
    "OPTIMIZERS", "TF1", "TFOD", "VOC_CLASSES", "AnchorConfig", "Config",
    "ConfigError", "DataConfig", "EvalConfig", "LossConfig", "MatchingConfig", "ModelConfig",
    "TrainConfig", "shape_fields", "validate", "CONFIG_FILENAME", "recipe_dir", "recipe_names",
    "recipe_path", "load_config", "from_dict", "to_dict", "to_json", "from_json",
    "apply_overrides", "Overrides", "override_origin", "config_from", "with_eval_batch_size", "parse_override", "save_config", "load_saved_config",
]

CONFIG_FILENAME = "config.json"


# --- anchor presets ------------------------------------------------------------------------

def _fill_anchor_preset(config: Config) -> None:
    anchors = config.anchors
    if anchors.preset not in ANCHOR_PRESETS or config.model.architecture not in ARCHITECTURES:
        return  # reported by validation
    for name, value in preset_values(anchors.preset, config.model.architecture).items():
        if not getattr(anchors, name):
            setattr(anchors, name, value)


# --- fields derived from the architecture ---------------------------------------------------

def _fill_derived_fields(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with `model.backbone`, `data.preprocessing` and `model.num_classes` filled in when
    absent: the architecture's backbone, that backbone's input convention
    (ssd.config.architectures) and the class list's length plus the background. Configs saved
    before the first two existed are VGG16 ones and get exactly what they used."""
    model = values.get("model", {})
    data = values.get("data", {})
    if not isinstance(model, Mapping) or not isinstance(data, Mapping):
        return values  # reported by the type checks
    model, data = dict(model), dict(data)
    architecture = model.get("architecture", ModelConfig.architecture)
    if "backbone" not in model and architecture in ARCHITECTURES:
        model["backbone"] = ARCHITECTURES[architecture].backbone
    if "preprocessing" not in data and model.get("backbone") in BACKBONE_PREPROCESSING:
        data["preprocessing"] = BACKBONE_PREPROCESSING[model["backbone"]]
    names = data.get("class_names", DataConfig().class_names)
    if "num_classes" not in model and isinstance(names, (list, tuple)):
        model["num_classes"] = len(names) + 1
    return {**values, "model": model, "data": data}


# --- named class lists -----------------------------------------------------------------------

def _expand_named_class_list(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with a named `data.class_names` ("voc", "coco") replaced by its list of names."""
    data = values.get("data")
    names = data.get("class_names") if isinstance(data, Mapping) else None
    if not isinstance(names, str):
        return values
    if names not in NAMED_CLASS_LISTS:
        raise ConfigError(f"data.class_names: {names!r} names no class list (known: "
                          f"{', '.join(sorted(NAMED_CLASS_LISTS))}); give a list of names instead")
    return {**values, "data": {**data, "class_names": list(NAMED_CLASS_LISTS[names])}}


# --- dict <-> dataclass with type checks ---------------------------------------------------

def _check_value(value: Any, annotation: Any, field: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(value, inner, field)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{field}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_value(v, args[0], f"{field}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{field}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{field}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{field}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{field}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{field}: unsupported type {annotation}")


def _update_dataclass(obj: Any, values: Mapping[str, Any], prefix: str) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        field = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{field}: unknown field (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _update_dataclass(current, value, field + ".")
        else:
            setattr(obj, key, _check_value(value, hints[key], field))


def from_dict(values: Mapping[str, Any]) -> Config:
    """Builds a validated Config from a (possibly partial) nested mapping."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"config: expected a mapping, got {values!r}")
    values = _expand_named_class_list(values)
    values = _fill_derived_fields(values)
    config = Config()
    _update_dataclass(config, values, "")
    _fill_anchor_preset(config)
    validate(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_json(config: Config) -> str:
    return json.dumps(to_dict(config), indent=2)


def from_json(text: str) -> Config:
    return from_dict(json.loads(text))


def apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Sets dotted fields (e.g. {"train.batch_size": 8}) in a nested dict, in place."""
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {part} is not a section")
        node[parts[-1]] = value
    return values


class Overrides(dict):
    """Dotted field -> value (as `apply_overrides` takes), remembering where each value came from
    (e.g. "--set train.batch_size=8", "--batch_size") so that an error can name it."""

    def __init__(self, values: Mapping[str, Any] | None = None,
                 origins: Mapping[str, str] | None = None):
        super().__init__(values or {})
        self.origins = dict(origins or {})

    def set(self, field: str, value: Any, origin: str) -> None:
        self[field] = value
        self.origins[field] = origin


def override_origin(overrides: Mapping[str, Any], field: str) -> str:
    """Where the override of `field` came from; a plain mapping's overrides name themselves."""
    origin = getattr(overrides, "origins", {}).get(field)
    if origin:
        return origin
    try:
        shown = json.dumps(overrides[field])
    except (TypeError, ValueError):
        shown = repr(overrides[field])
    return f"override {field}={shown}"


def _check_override(field: str, value: Any) -> None:
    """The checks one override can fail alone: an unknown field or section, a value of the wrong
    type. Raises ConfigError naming the field."""
    nested = _expand_named_class_list(apply_overrides({}, {field: value}))
    _update_dataclass(Config(), nested, "")


def _leading_field(message: str) -> str:
    """"train.batch_size[0]: must be ..." -> "train.batch_size"."""
    return message.split(":", 1)[0].split("[", 1)[0].strip()


def _forget_class_count(values: dict[str, Any]) -> None:
    model = values.get("model")
    if isinstance(model, dict):
        values["model"] = {k: v for k, v in model.items() if k != "num_classes"}


def config_from(values: Mapping[str, Any], overrides: Mapping[str, Any], origin: str) -> Config:
    """A validated Config from `values` (read from `origin`, e.g. a recipe file) with the dotted
    `overrides` applied (`Overrides` tells where each came from).

    A ConfigError names where the bad value came from: the override that sets an unknown field,
    a value of the wrong type or the field a check refuses; `origin` when the values alone are
    already refused; else `origin` with the overrides (a combination neither gives alone).
    """
    for field in overrides:
        try:
            _check_override(field, overrides[field])
        except ConfigError as e:
            raise ConfigError(f"{override_origin(overrides, field)}: {e}") from None
    values = copy.deepcopy(dict(values))
    if "data.class_names" in overrides and "model.num_classes" not in overrides:
        _forget_class_count(values)  # it follows the new class list
    try:
        return from_dict(apply_overrides(copy.deepcopy(values), overrides))
    except ConfigError as e:
        error = e
    blamed = _leading_field(str(error))
    if blamed in overrides:
        raise ConfigError(f"{override_origin(overrides, blamed)}: {error}") from None
    if overrides:
        try:
            from_dict(values)
        except ConfigError:
            pass
        else:
            origins = ", ".join(override_origin(overrides, f) for f in overrides)
            raise ConfigError(f"{origin} with {origins}: {error}") from None
    raise ConfigError(f"{origin}: {error}") from None


def with_eval_batch_size(config: Config, batch_size: int | None, origin: str,
                         given_by: str = "--batch_size") -> Config:
    """`config` (read from `origin`) with eval.batch_size set to `batch_size` when one is given,
    validated; an error names `given_by`."""
    if not batch_size:
        return config
    return config_from(to_dict(config), Overrides({"eval.batch_size": batch_size},
                                                  {"eval.batch_size": given_by}), origin)


def parse_override(text: str) -> tuple[str, Any]:
    """Parses 'section.field=value' from the command line; the value is JSON when it parses."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.field=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def recipe_dir() -> Path:
    """Where the named recipes are: the installed package data, else the source tree's configs/."""
    installed = importlib.resources.files("ssd") / "configs"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "configs"  # a source checkout


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.json"))


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        return path
    candidate = recipe_dir() / f"{name_or_path}.json"
    if not candidate.exists():
        raise ConfigError(f"unknown recipe {name_or_path!r}; known recipes: {', '.join(recipe_names())}")
    return candidate


def load_config(name_or_path: str | os.PathLike,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Loads a recipe by name (e.g. "ssd300_voc0712") or path and applies dotted overrides."""
    path = recipe_path(name_or_path)
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return config_from(values, overrides or {}, str(path))


def save_config(config: Config, model_dir: str | os.PathLike) -> Path:
    path = Path(model_dir) / CONFIG_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(to_json(config))
    os.replace(tmp, path)
    return path


def load_saved_config(model_dir: str | os.PathLike) -> Config:
    path = Path(model_dir) / CONFIG_FILENAME
    if not path.exists():
        raise ConfigError(f"{path}: no saved config (is {model_dir} a model directory?)")
    return load_config(path)
