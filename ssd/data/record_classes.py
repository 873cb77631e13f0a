"""Do the records name their classes as the config does? Checked before training and evaluation.

A record stores each object's label (1..N) and, as written by the converters, the class name
beside it (`image/object/class/text`). Records converted for other classes (say fruit) read with
a config of shapes would train and evaluate without complaint and call an apple a "circle"; so
before anything runs, the names the records give each label are compared with the config's
`data.class_names` (label l is `class_names[l - 1]`), and a disagreement stops the run with
both lists and the labels that differ.

Where the names come from, cheaply: the converter's `<name>_summary.json` beside its shards when
present (its `classes`, labels 1..N in order, with `objects_per_class` telling which are used);
else the first `SAMPLE_RECORDS_PER_FILE` records of each file. Records using fewer classes than
the config are fine. Records without class names (written by other tools) cannot be checked:
accepted with a warning.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterable, Mapping, Sequence

import tensorflow as tf
from absl import logging

from ssd.data.record_files import DataError, resolve_files
from ssd.data.records import LABEL, TEXT
from ssd.errors import UserError

SAMPLE_RECORDS_PER_FILE = 300
_SHARD = re.compile(r"^(?P<name>.+)-\d{5}-of-\d{5}$")  # dataset/tfrecord_writer.py's shard names
_MAX_SHOWN = 8


class RecordClassesError(UserError, ValueError):
    """The records name their classes differently from the config; the message shows both."""


# --- what the records say ------------------------------------------------------------------

def summary_path(record_file: str) -> str | None:
    """The converter's summary beside a shard `<dir>/<name>-NNNNN-of-NNNNN`, if it exists."""
    match = _SHARD.match(os.path.basename(record_file))
    if not match:
        return None
    path = os.path.join(os.path.dirname(record_file), f"{match.group('name')}_summary.json")
    return path if tf.io.gfile.exists(path) else None


def _read_summary(path: str) -> dict | None:
    try:
        with tf.io.gfile.GFile(path) as f:
            summary = json.load(f)
    except (ValueError, tf.errors.OpError):
        return None
    return summary if isinstance(summary, dict) else None


def _class_list(summary: dict | None) -> list[str] | None:
    names = summary.get("classes") if summary is not None else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return None
    return names


def class_list_of_summary(path: str) -> list[str] | None:
    """The whole class list (labels 1..N) a converter summary names, used or not; None when the
    file does not hold one."""
    return _class_list(_read_summary(path))


def classes_of_summary(path: str) -> dict[int, str] | None:
    """{label: name} of the classes a converter summary lists with objects; None when the file
    does not hold a class list."""
    summary = _read_summary(path)
    names = _class_list(summary)
    if names is None:
        return None
    counts = summary.get("objects_per_class")
    counts = counts if isinstance(counts, dict) else {}
    return {label: name for label, name in enumerate(names, start=1) if counts.get(name, 1) > 0}


def classes_of_records(path: str, limit: int = SAMPLE_RECORDS_PER_FILE) -> tuple[dict[int, set[str]], int, int]:
    """({label: names given to it}, records read, records with labels but no names) over the
    first `limit` records of a TFRecord file."""
    names: dict[int, set[str]] = {}
    read = without_text = 0
    records = tf.data.TFRecordDataset(path).take(limit).as_numpy_iterator()
    while True:
        try:
            serialized = next(records)
        except StopIteration:
            break
        except tf.errors.OpError as e:
            raise DataError(f"{path}: a record is damaged (truncated or corrupted) after {read} "
                            f"readable records ({e.message.splitlines()[0]}); run the converter "
                            f"again to rewrite it") from None
        features = tf.train.Example.FromString(serialized).features.feature
        read += 1
        labels = list(features[LABEL].int64_list.value) if LABEL in features else []
        texts = list(features[TEXT].bytes_list.value) if TEXT in features else []
        if labels and (len(texts) != len(labels) or not all(texts)):
            without_text += 1
            continue
        for label, text in zip(labels, texts):
            names.setdefault(int(label), set()).add(text.decode("utf-8", errors="replace"))
    return names, read, without_text


def record_class_names(files: Sequence[str], limit: int = SAMPLE_RECORDS_PER_FILE
                       ) -> tuple[dict[int, set[str]], list[str]]:
    """({label: names} over all files, the files whose sampled records carry no names)."""
    names: dict[int, set[str]] = {}
    unnamed: list[str] = []
    summaries: dict[str, dict[int, str] | None] = {}
    for path in files:
        summary = summary_path(path)
        if summary is not None and summary not in summaries:
            summaries[summary] = classes_of_summary(summary)
        if summary is not None and summaries[summary] is not None:
            found = {label: {name} for label, name in summaries[summary].items()}
        else:
            found, _, without_text = classes_of_records(path, limit)
            if without_text:
                unnamed.append(path)
        for label, label_names in found.items():
            names.setdefault(label, set()).update(label_names)
    return names, unnamed


def record_class_list(data: str | Sequence[str], limit: int = SAMPLE_RECORDS_PER_FILE,
                      read_records: bool = True) -> tuple[list[str] | None, str]:
    """(the class list the records of `data` were converted with, where it was read), or (None,
    why not). The converters' summaries state it whole, absent classes included; records without
    one tell it only when their sampled names cover labels 1..N, one name each. With
    `read_records` False only the summaries are read (files only: TensorFlow's runtime, which a
    multi-worker strategy must configure first, is not started)."""
    try:
        files = resolve_files(data)
    except (FileNotFoundError, ValueError) as e:
        return None, str(e)
    per_file = [summary_path(f) for f in files]
    summaries = sorted({path for path in per_file if path is not None})
    lists = {tuple(names) for names in map(class_list_of_summary, summaries) if names is not None}
    if len(lists) == 1 and None not in per_file:
        return list(next(iter(lists))), _shown(summaries)
    if len(lists) > 1:
        return None, f"the summaries {_shown(summaries)} list different classes"
    if not read_records:
        return None, "no converter summary beside every shard"
    names, unnamed = record_class_names(files, limit)
    labels = sorted(names)
    if unnamed or not labels:
        return None, "the records carry no class names"
    if labels != list(range(1, len(labels) + 1)) or any(len(names[l]) != 1 for l in labels):
        return None, "the records' labels do not name classes 1..N one name each"
    return [next(iter(names[l])) for l in labels], f"the class names in {_shown(files)}"


# --- the comparison ------------------------------------------------------------------------

def disagreements(record_names: Mapping[int, Iterable[str]], class_names: Sequence[str]) -> list[str]:
    """One line per label whose record names differ from the config's name for it."""
    lines = []
    for label in sorted(record_names):
        given = sorted(record_names[label])
        expected = class_names[label - 1] if 1 <= label <= len(class_names) else None
        if expected is None:
            lines.append(f"label {label}: records {' / '.join(map(repr, given))}, config has no label "
                         f"{label} ({len(class_names)} classes)")
        elif given != [expected]:
            lines.append(f"label {label}: records {' / '.join(map(repr, given))}, config {expected!r}")
    return lines


def label_list(record_names: Mapping[int, Iterable[str]]) -> str:
    """The names the records give each label, e.g. "1:apple, 2:banana/plantain"."""
    return ", ".join(f"{label}:{'/'.join(sorted(record_names[label]))}" for label in sorted(record_names))


def training_remedy(record_classes: Sequence[str] | None, class_names: Sequence[str]) -> str:
    """train.py's fix: train for the records' classes."""
    if record_classes is None:
        return ("Convert the data with the config's classes (convert_voc.py --classes=..., "
                "convert_coco.py --categories_from=...), or set the records' classes with "
                "--set data.class_names='[...]'.")
    return (f"To train for the records' classes, leave data.class_names out (training reads them "
            f"from the converter's summary), or give them: "
            f"--set data.class_names='{json.dumps(list(record_classes))}'. A model directory "
            f"trained for other classes cannot resume with them: use a new --model_dir.")


def evaluation_remedy(record_classes: Sequence[str] | None, class_names: Sequence[str]) -> str:
    """eval.py's fix: convert the evaluation data with the model's classes."""
    return (f"Convert the evaluation data with the model's classes, labels 1..{len(class_names)} "
            f"in its order: convert_voc.py --classes={','.join(class_names)}, or convert_coco.py "
            f"--categories_from=<the training split's annotation file or <name>_categories.json>.")


def _shown(files: Sequence[str]) -> str:
    return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def check_record_classes(data: str | Sequence[str], class_names: Sequence[str],
                         limit: int = SAMPLE_RECORDS_PER_FILE, remedy=training_remedy) -> None:
    """Raises RecordClassesError when the records of `data` (a pattern, a directory of shards or
    files, as `ssd.data.input_fn.resolve_files` takes) name a label differently from `class_names`
    (the config's `data.class_names`, label l = class_names[l - 1]); warns about files whose
    records carry no class names. Missing files are left to the input pipeline to report.
    `remedy(records' class list or None, class_names)` words the fix for the calling app
    (`training_remedy`, `evaluation_remedy`)."""
    try:
        files = resolve_files(data)
    except (FileNotFoundError, ValueError):
        return
    record_names, unnamed = record_class_names(files, limit)
    if unnamed:
        logging.warning("%d of %d record files (%s) hold objects without class names "
                        "(image/object/class/text): their labels cannot be checked against the "
                        "config's data.class_names", len(unnamed), len(files), _shown(unnamed))
    lines = disagreements(record_names, class_names)
    if lines:
        shown = lines[:_MAX_SHOWN] + ([f"... {len(lines) - _MAX_SHOWN} more"] if len(lines) > _MAX_SHOWN else [])
        whole_list, _ = record_class_list(files, limit)
        listed = (", ".join(f"{label}:{name}" for label, name in enumerate(whole_list, start=1))
                  if whole_list is not None else label_list(record_names))
        raise RecordClassesError(
            f"the records in {_shown(files)} were made for other classes than the config's:\n"
            + "\n".join(f"  {line}" for line in shown)
            + f"\n  records (label:name): {listed}"
            + f"\n  config data.class_names: {', '.join(class_names)}"
            + "\n" + remedy(whole_list, class_names))
