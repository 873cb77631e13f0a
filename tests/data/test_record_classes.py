"""Records made for other classes than the config's are refused before training or evaluation."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging
from PIL import Image

from ssd.data import record_classes
from ssd.data.record_classes import record_class_list
from ssd.data.records import TEXT, make_example

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ["circle", "square", "triangle"]
FRUIT = ["apple", "banana", "cherry"]


def _png(height=24, width=32):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_records(path, objects, with_text=True):
    """One record per entry of `objects`: a list of (label, name) pairs."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, pairs in enumerate(objects):
            example = make_example(
                encoded=_png(), image_format="png", height=24, width=32, filename=f"{i}.png",
                source_id=str(i), boxes=[[0.1, 0.1, 0.5, 0.5]] * len(pairs),
                labels=[label for label, _ in pairs],
                texts=[name for _, name in pairs], difficult=[0] * len(pairs),
                truncated=[0] * len(pairs))
            if not with_text:  # as other tools write them: labels only
                del example.features.feature[TEXT]
            writer.write(example.SerializeToString())
    return str(path)


@pytest.fixture
def warnings(monkeypatch):
    messages = []
    monkeypatch.setattr(absl_logging, "warning", lambda fmt, *args: messages.append(fmt % args))
    return messages


def test_records_of_other_classes_are_refused_with_both_lists(tmp_path):
    write_records(tmp_path / "fruit-00000-of-00002", [[(1, "apple"), (2, "banana")], []])
    write_records(tmp_path / "fruit-00001-of-00002", [[(3, "cherry")]])
    with pytest.raises(record_classes.RecordClassesError) as caught:
        record_classes.check_record_classes(str(tmp_path / "fruit-*"), SHAPES)
    message = str(caught.value)
    assert "label 1: records 'apple', config 'circle'" in message
    assert "label 2: records 'banana', config 'square'" in message
    assert "label 3: records 'cherry', config 'triangle'" in message
    assert "records (label:name): 1:apple, 2:banana, 3:cherry" in message
    assert "config data.class_names: circle, square, triangle" in message
    assert "fruit-00000-of-00002" in message
    # train.py's fix, exactly: the class list alone (model.num_classes follows from it)
    assert '--set data.class_names=\'["apple", "banana", "cherry"]\'' in message
    assert "num_classes" not in message


def test_evaluation_names_the_conversion_with_the_models_classes(tmp_path):
    data = write_records(tmp_path / "fruit-00000-of-00001", [[(1, "apple"), (2, "banana")]])
    with pytest.raises(record_classes.RecordClassesError) as caught:
        record_classes.check_record_classes(data, SHAPES, remedy=record_classes.evaluation_remedy)
    message = str(caught.value)
    assert "convert_voc.py --classes=circle,square,triangle" in message
    assert "convert_coco.py --categories_from=" in message
    assert "--set" not in message  # eval.py has no --set


def test_only_the_labels_that_disagree_are_listed(tmp_path):
    # circle and square agree; label 3 is named "star" here and label 4 is beyond the config
    data = write_records(tmp_path / "mixed", [[(1, "circle"), (3, "star")], [(2, "square"), (4, "moon")]])
    with pytest.raises(record_classes.RecordClassesError) as caught:
        record_classes.check_record_classes(data, SHAPES)
    lines = [line.strip() for line in str(caught.value).splitlines() if line.strip().startswith("label ")]
    assert lines == ["label 3: records 'star', config 'triangle'",
                     "label 4: records 'moon', config has no label 4 (3 classes)"]


def test_records_using_fewer_classes_than_the_config_are_fine(tmp_path, warnings):
    data = write_records(tmp_path / "subset", [[(1, "circle")], [(3, "triangle"), (1, "circle")], []])
    record_classes.check_record_classes(data, SHAPES)
    assert warnings == []


def test_records_without_class_names_are_accepted_with_a_warning(tmp_path, warnings):
    data = write_records(tmp_path / "other-tool", [[(1, "x"), (7, "y")]], with_text=False)
    record_classes.check_record_classes(data, SHAPES)
    assert len(warnings) == 1
    assert "other-tool" in warnings[0] and "without class names" in warnings[0]


def test_only_a_bounded_sample_of_each_file_is_read(tmp_path):
    objects = [[(1, "circle")]] * 5 + [[(1, "apple")]]
    data = write_records(tmp_path / "late", objects)
    record_classes.check_record_classes(data, SHAPES, limit=5)  # the 6th record is not read
    with pytest.raises(record_classes.RecordClassesError, match="'apple'"):
        record_classes.check_record_classes(data, SHAPES, limit=6)


def test_the_converter_summary_beside_the_shards_is_used(tmp_path):
    # records without names, but the converter's summary says which classes they were made for
    write_records(tmp_path / "fruit-00000-of-00001", [[(1, "")]], with_text=False)
    summary = {"name": "fruit", "classes": FRUIT,
               "objects_per_class": {"apple": 4, "banana": 0, "cherry": 1}}
    (tmp_path / "fruit_summary.json").write_text(json.dumps(summary))
    with pytest.raises(record_classes.RecordClassesError) as caught:
        record_classes.check_record_classes(str(tmp_path), SHAPES)
    message = str(caught.value)
    # banana has no objects: only the classes the records use are compared, but the whole
    # list the records were converted with is shown and given as the fix
    assert "records (label:name): 1:apple, 2:banana, 3:cherry" in message
    assert "label 2" not in message
    assert '--set data.class_names=\'["apple", "banana", "cherry"]\'' in message
    # the same summary with the config's names passes
    summary["classes"] = SHAPES
    summary["objects_per_class"] = {"circle": 4, "square": 0, "triangle": 1}
    (tmp_path / "fruit_summary.json").write_text(json.dumps(summary))
    record_classes.check_record_classes(str(tmp_path), SHAPES)


def _summary(directory, name, classes, counts):
    summary = {"name": name, "classes": classes, "objects_per_class": dict(zip(classes, counts))}
    (directory / f"{name}_summary.json").write_text(json.dumps(summary))


def test_the_class_list_is_the_summarys_whole_list_absent_classes_included(tmp_path):
    write_records(tmp_path / "fruit-00000-of-00002", [[(1, "apple")]])
    write_records(tmp_path / "fruit-00001-of-00002", [[(3, "cherry")]])
    _summary(tmp_path, "fruit", FRUIT, [1, 0, 1])
    names, source = record_class_list(str(tmp_path / "fruit-*"), read_records=False)
    assert names == FRUIT and "fruit_summary.json" in source


def test_without_a_summary_the_records_tell_a_list_only_when_it_is_whole(tmp_path):
    whole = write_records(tmp_path / "whole", [[(2, "banana"), (1, "apple")], [(3, "cherry")]])
    assert record_class_list(whole)[0] == FRUIT
    assert record_class_list(whole, read_records=False)[0] is None  # summaries only
    gap = write_records(tmp_path / "gap", [[(1, "apple"), (3, "cherry")]])  # label 2 unknown
    names, why = record_class_list(gap)
    assert names is None and "1..N" in why
    unnamed = write_records(tmp_path / "unnamed", [[(1, "x")]], with_text=False)
    assert record_class_list(unnamed)[0] is None


def test_summaries_that_disagree_give_no_list(tmp_path):
    write_records(tmp_path / "a-00000-of-00001", [[(1, "apple")]])
    write_records(tmp_path / "b-00000-of-00001", [[(1, "circle")]])
    _summary(tmp_path, "a", FRUIT, [1, 0, 0])
    _summary(tmp_path, "b", SHAPES, [1, 0, 0])
    names, why = record_class_list([str(tmp_path / "a-*"), str(tmp_path / "b-*")])
    assert names is None and "different classes" in why


def _train(data, model_dir, *extra):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"--data_dir={data}", f"--model_dir={model_dir}",
         "--config=ssd300_shapes_cpu", "--pretrained=none", "--max_steps=1",
         "--set=model.width_multiplier=0.125", "--set=train.batch_size=2", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # starts train.py
def test_train_takes_the_records_classes_or_refuses_a_list_set_against_them(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_records(data / "fruit-00000-of-00001", [[(1, "apple"), (2, "banana")], [(3, "cherry")]])
    _summary(data, "fruit", FRUIT, [1, 1, 1])
    refused = tmp_path / "refused"
    result = _train(data, refused, """--set=data.class_names=["circle","square","triangle","star"]""")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "train.py: error: the records in" in result.stderr
    assert "label 1: records 'apple', config 'circle'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not refused.exists() or not any(refused.iterdir())

    model_dir = tmp_path / "model"
    result = _train(data, model_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "classes from the records" in result.stderr
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["data"]["class_names"] == FRUIT
    assert saved["model"]["num_classes"] == len(FRUIT) + 1
