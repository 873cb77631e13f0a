"""Importing trained SSD weights from another implementation into a model directory.

The result is what training would have left: `config.json` (written by
`ssd.config.loading.save_config`, as train.py writes it) and a training checkpoint `ckpt-0` at
global step 0 (`ssd.modeling.checkpoints.training_items` + `Checkpointer`, the training loop's
saver), so eval.py, export.py and visualize.py read it and train.py resumes from it (with fresh
optimizer slots: the checkpoint holds no optimizer state).

Each source is a module (`SOURCES`, imported on first use) with the same two functions:

  default_config(input_path) -> (recipe name, {dotted field: value})
      the recipe that matches the file (architecture and classes read from its shapes) and the
      overrides that make this project's network compute what the source's computes (input
      convention and means, anchor preset and order, padding, evaluation filters);
  model_arrays(input_path, config, model) -> ({variable.path: array}, [unused tensor names])
      a value for each model variable, converted to this project's conventions, and the names of
      the file's tensors it did not use (an error here: everything must be used).

A source module may also offer `describe(input_path) -> str` (one line about the file).

`import_weights` checks everything before writing anything: every variable gets a value of its
shape, no tensor of the file is left over. It writes into a temporary sibling of `model_dir`
renamed into place at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ssd.errors import UserError

SOURCES = {
    "tf1": "ssd.weights.tf1_original",
    "caffe": "ssd.weights.caffe_original",
    "torchvision": "ssd.weights.torchvision_ssd",
}
REPORT_FILENAME = "import_report.json"


class WeightsImportError(UserError, ValueError):
    """The file cannot be imported into the configured model; the message says what is wrong."""


def source_module(source: str):
    if source not in SOURCES:
        raise WeightsImportError(f"unknown source {source!r}; known: {', '.join(sorted(SOURCES))}")
    return importlib.import_module(SOURCES[source])


def _short_list(names, limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_arrays(model, arrays: Mapping[str, np.ndarray], unused, where: str) -> None:
    """Raises WeightsImportError naming variables without a value, values for no variable, values
    of the wrong shape and the file's unused tensors."""
    variables = {v.path: v for v in model.variables}
    problems = []
    missing = [p for p in variables if p not in arrays]
    if missing:
        problems.append(f"no value for model variable(s) {_short_list(missing)}")
    extra = [k for k in arrays if k not in variables]
    if extra:
        problems.append(f"values for no model variable: {_short_list(extra)}")
    wrong = [f"{k} {tuple(np.shape(a))} (model: {tuple(variables[k].shape)})"
             for k, a in arrays.items() if k in variables
             and tuple(np.shape(a)) != tuple(variables[k].shape)]
    if wrong:
        problems.append(f"wrong shape: {_short_list(wrong, 6)}")
    if unused:
        problems.append(f"left over in the file (not used by this model): {_short_list(unused)}")
    if problems:
        raise WeightsImportError(f"{where}: " + "; ".join(problems))


def resolve_config(module, input_path: str, recipe: str | None,
                   overrides: Mapping[str, Any] | None):
    """(config, default recipe, recipe used, the overrides applied)."""
    from ssd.config import loading as config_lib

    default_recipe, source_overrides = module.default_config(input_path)
    merged = config_lib.Overrides()
    for field, value in source_overrides.items():
        merged.set(field, value, f"the source's {field}={json.dumps(value)}")
    origins = getattr(overrides, "origins", {})
    for field, value in (overrides or {}).items():
        merged.set(field, value, origins.get(field) or f"--set {field}={json.dumps(value)}")
    used = recipe or default_recipe
    return config_lib.load_config(used, merged), default_recipe, used, dict(merged)


def _refuse_existing(model_dir: Path) -> None:
    if model_dir.exists() and (not model_dir.is_dir() or any(model_dir.iterdir())):
        raise WeightsImportError(f"{model_dir} exists and is not empty; importing writes a new "
                                 f"model directory (choose another --model_dir)")


def import_weights(source: str, input_path: str, model_dir: str, recipe: str | None = None,
                   overrides: Mapping[str, Any] | None = None) -> dict:
    """Imports `input_path` (a file of `source`) into a new `model_dir`; returns a report dict:
    source, input, recipe, default_recipe, overrides, config, model_dir, checkpoint, variables,
    parameters, seconds, description."""
    started = time.monotonic()
    model_dir_path = Path(model_dir)
    _refuse_existing(model_dir_path)
    module = source_module(source)
    if not os.path.exists(input_path) and not os.path.exists(input_path + ".index"):
        raise WeightsImportError(f"{input_path}: no such file")
    describe = getattr(module, "describe", None)
    description = describe(input_path) if describe else ""

    import tensorflow as tf

    from ssd.config import loading as config_lib
    from ssd.modeling import checkpoints
    from ssd.modeling.build import build_model

    config, default_recipe, used_recipe, applied = resolve_config(module, input_path, recipe,
                                                                  overrides)
    model = build_model(config)
    where = f"{input_path} ({source}) into {used_recipe}"
    try:
        arrays, unused = module.model_arrays(input_path, config, model)
        check_arrays(model, arrays, unused, where)
    except WeightsImportError as e:
        if recipe and recipe != default_recipe:
            raise WeightsImportError(f"{e} (the file looks like recipe {default_recipe}; leave "
                                     f"--config out to use it)") from None
        raise
    for variable in model.variables:
        variable.assign(np.asarray(arrays[variable.path], dtype=variable.dtype))
    bad = checkpoints.first_non_finite(model.variables)
    if bad is not None:
        raise WeightsImportError(f"{where}: {bad} holds NaN or Inf values")

    parent = model_dir_path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{model_dir_path.name}.importing-", dir=parent))
    try:
        config_lib.save_config(config, temporary)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name=checkpoints.GLOBAL_STEP)
        saver = checkpoints.Checkpointer(checkpoints.training_items(model, step), str(temporary),
                                         max_to_keep=config.train.keep_checkpoint_max)
        saved = saver.save(0)
        report = {
            "source": source, "input": os.path.abspath(input_path), "description": description,
            "recipe": used_recipe, "default_recipe": default_recipe, "overrides": applied,
            "variables": len(model.variables),
            "parameters": int(sum(int(np.prod(v.shape)) for v in model.variables)),
            "checkpoint": os.path.basename(saved),
        }
        (temporary / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n")
        _refuse_existing(model_dir_path)  # again: someone may have written it meanwhile
        if model_dir_path.is_dir():
            model_dir_path.rmdir()  # empty (checked): the rename needs it gone
        os.rename(temporary, model_dir_path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    report.update(config=config, model_dir=str(model_dir_path),
                  checkpoint=str(model_dir_path / report["checkpoint"]),
                  seconds=time.monotonic() - started)
    return report
