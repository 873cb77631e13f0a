"""Writes converted images into sharded TFRecords: what every data set converter shares.

A converter (VOC, COCO, ...) finds its images and annotations and supplies one picklable function
that turns a task into an `Outcome` (a record's fields, or a skip reason, plus warnings).
`write_records` does the rest:
  * order: tasks are shuffled by a seeded hash of their key (the image id), so training reads a
    mix of sources, and the order is the same on every machine, Python version and worker count;
    without a seed they keep the converter's order (test sets, comparisons by hand);
  * parallel conversion in worker processes, with a progress line, results taken in task order;
  * sharding: the i-th written record goes to shard i mod N, named `<name>-NNNNN-of-NNNNN`;
  * atomicity: shards are written into a hidden directory and moved into place only when all are
    complete; the summary JSON is written last, so its presence marks a finished conversion, and
    shards of an earlier run with another shard count are removed;
  * the summary: images, objects and difficult objects per class, crowd regions, re-encoded images,
    EXIF orientation decisions, every skipped image and why, warning counts with a few examples each.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import math
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Callable, Collection, Iterator, Mapping, Sequence, TextIO, TypeVar

import tensorflow as tf
from absl import logging

from ssd.data import records
from ssd.data.records import SHARD_PATTERN, parse_shard_name, shard_name, summary_name
from ssd.progress import Progress

IMAGES_PER_SHARD = 1000
DEFAULT_SHUFFLE_SEED = 0
MAX_LOGGED_PER_KIND = 5  # warnings of one kind logged with their file; the rest are only counted
MAX_LISTED = 10  # items quoted in an error message

Note = tuple[str, str]  # (warning kind, message)
Task = TypeVar("Task")


class ConversionError(Exception):
    """The input cannot be converted as asked; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class ConvertedImage:
    """The fields of one record."""
    image_id: str
    filename: str
    encoded: bytes
    height: int
    width: int
    boxes: tuple[tuple[float, float, float, float], ...]  # normalized [ymin, xmin, ymax, xmax]
    labels: tuple[int, ...]
    texts: tuple[str, ...]
    difficult: tuple[int, ...]
    truncated: tuple[int, ...]
    reencoded: str | None             # why the source bytes were not kept; None if kept
    exif_orientation: int = 1         # the source's EXIF orientation tag
    exif_upright: bool = False        # the record holds the upright (transposed) pixels
    exif_decided_by: str = "tag"      # "tag", "size" or "policy" (ssd.data.orientation)
    is_crowd: tuple[int, ...] | None = None  # None: all 0
    area: tuple[float, ...] | None = None    # annotated areas in pixels; None: not written


@dataclasses.dataclass(frozen=True)
class Outcome:
    image_id: str
    annotation_file: str              # the file warnings are attributed to
    image_file: str                   # the file named when the image is skipped
    image: ConvertedImage | None      # None when skipped
    skip_reason: str | None
    notes: tuple[Note, ...]


class WarningTally:
    """Counts warnings by kind; logs the first few of each kind with their file."""

    def __init__(self, max_logged: int = MAX_LOGGED_PER_KIND, quiet_kinds: Collection[str] = ()):
        self.max_logged = max_logged
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)
        self.quiet_kinds = frozenset(quiet_kinds)  # corrections too small to warn about: only counted
        self.quiet_counts: collections.Counter[str] = collections.Counter()

    def add(self, kind: str, file: str, message: str) -> None:
        if kind in self.quiet_kinds:
            self.quiet_counts[kind] += 1
            return
        self.counts[kind] += 1
        if self.counts[kind] <= self.max_logged:
            text = f"{file}: {message}" if file else message
            self.examples[kind].append(text)
            logging.warning("%s", text)
            if self.counts[kind] == self.max_logged:
                logging.warning("(further '%s' warnings are only counted)", kind)


def listing(items: Sequence, total: int | None = None) -> str:
    """The first MAX_LISTED items, one per indented line, and how many more (of `total`)."""
    total = len(items) if total is None else total
    shown = "\n".join(f"  {item}" for item in list(items)[:MAX_LISTED])
    return shown + (f"\n  ... and {total - MAX_LISTED} more" if total > MAX_LISTED else "")


def check_name(name: str) -> None:
    if not name or os.sep in name:
        raise ConversionError(f"invalid output name {name!r}")


def finished_shards(output_directory: str | Path, name: str) -> list[Path]:
    """Every shard of the data set `name` in the directory, whatever its shard count."""
    pattern = os.path.join(glob.escape(str(output_directory)), f"{glob.escape(name)}-{SHARD_PATTERN}")
    return sorted(Path(path) for path in glob.glob(pattern)
                  if (parsed := parse_shard_name(path)) is not None and parsed[0] == name)


def shuffle_key(seed: int, key: str) -> bytes:
    # A hash instead of a random generator: the order depends only on the seed and the ids, not on
    # library versions, and adding an image does not reorder all the others.
    return hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=16).digest()


def ordered(tasks: Sequence[Task], key: Callable[[Task], str], shuffle_seed: int | None) -> list[Task]:
    """`tasks` shuffled by `shuffle_seed` (keys must be unique), or in their order when it is None."""
    if shuffle_seed is None:
        return list(tasks)
    return sorted(tasks, key=lambda task: shuffle_key(shuffle_seed, key(task)))


def order_description(shuffle_seed: int | None) -> dict:
    if shuffle_seed is None:
        return {"shuffled": False}
    return {"shuffled": True, "seed": shuffle_seed, "method": "sorted by blake2b(seed, image id)"}


def convert_all(tasks: Sequence[Task], convert: Callable[[Task], Outcome], num_workers: int
                ) -> Iterator[Outcome]:
    """Outcomes in task order; `convert` must be picklable (a module-level function or a partial)."""
    if num_workers <= 1 or len(tasks) <= 1:
        yield from map(convert, tasks)
        return
    # fork keeps workers cheap (no re-import of TensorFlow); the workers themselves never touch TF.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(method).Pool(num_workers) as pool:
        yield from pool.imap(convert, tasks, chunksize=4)


def serialize(image: ConvertedImage) -> bytes:
    example = records.make_example(
        encoded=image.encoded, image_format="jpeg", height=image.height, width=image.width,
        filename=image.filename, source_id=image.image_id, boxes=image.boxes, labels=image.labels,
        texts=image.texts, difficult=image.difficult, truncated=image.truncated,
        is_crowd=image.is_crowd, area=image.area)
    return example.SerializeToString(deterministic=True)


def write_json_atomically(path: Path, content: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n")
    os.replace(partial, path)


class _Counts:
    """What the summary says about the written records."""

    def __init__(self, num_shards: int):
        self.objects_per_class = collections.Counter()
        self.difficult_per_class = collections.Counter()
        self.reencoded = collections.Counter()
        self.upright = collections.Counter()       # decided_by -> images turned upright
        self.kept_stored = collections.Counter()   # decided_by -> images with a tag kept as stored
        self.images_per_shard = [0] * num_shards
        self.truncated = self.empty = self.written = self.crowd = 0

    def add(self, image: ConvertedImage, shard: int) -> None:
        self.images_per_shard[shard] += 1
        self.written += 1
        self.objects_per_class.update(image.texts)
        self.difficult_per_class.update(t for t, d in zip(image.texts, image.difficult) if d)
        self.truncated += sum(image.truncated)
        self.crowd += sum(image.is_crowd or ())
        self.empty += not image.labels
        if image.reencoded:
            self.reencoded[image.reencoded] += 1
        if image.exif_upright:
            self.upright[image.exif_decided_by] += 1
        elif image.exif_orientation != 1:
            self.kept_stored[image.exif_decided_by] += 1

    def summary(self, class_names: Sequence[str]) -> dict:
        return {
            "num_images": self.written,
            "num_objects": sum(self.objects_per_class.values()),
            "num_difficult": sum(self.difficult_per_class.values()),
            "num_truncated": self.truncated,
            "num_crowd": self.crowd,
            "num_empty_images": self.empty,
            "objects_per_class": {n: self.objects_per_class[n] for n in class_names},
            "difficult_per_class": {n: self.difficult_per_class[n] for n in class_names},
            "reencoded_images": dict(sorted(self.reencoded.items())),
            "exif_orientation": {
                "num_turned_upright": sum(self.upright.values()),
                "num_kept_as_stored": sum(self.kept_stored.values()),
                "turned_upright_by": dict(sorted(self.upright.items())),
                "kept_as_stored_by": dict(sorted(self.kept_stored.items())),
            },
        }


def write_records(tasks: Sequence[Task], convert: Callable[[Task], Outcome], *,
                  key: Callable[[Task], str], output_directory: str | Path, name: str,
                  class_names: Sequence[str], header: dict, skipped: list[dict], tally: WarningTally,
                  num_shards: int | None = None, num_workers: int = 1,
                  shuffle_seed: int | None = DEFAULT_SHUFFLE_SEED,
                  progress_stream: TextIO | None = None, side_files: Mapping[str, str] | None = None) -> dict:
    """Converts `tasks` and writes their records; returns the summary also written as JSON.

    `header` (the converter's own fields: sources, options) opens the summary after the name;
    `skipped` holds images the converter already left out ({"image_id", "file", "reason"}), to
    which images skipped here are added. `side_files` ({file name: text}, e.g. a category map) are
    put in place with the shards, so a failed run leaves an earlier conversion's untouched. Raises
    ConversionError when no image could be written.
    """
    check_name(name)
    output_directory = Path(output_directory)
    tasks = ordered(tasks, key, shuffle_seed)
    num_shards = num_shards or max(1, math.ceil(len(tasks) / IMAGES_PER_SHARD))
    shard_names = [shard_name(name, i, num_shards) for i in range(num_shards)]
    skipped = list(skipped)
    counts = _Counts(num_shards)
    output_directory.mkdir(parents=True, exist_ok=True)
    partial_directory = output_directory / f".{name}.partial"
    shutil.rmtree(partial_directory, ignore_errors=True)  # left by a killed run
    partial_directory.mkdir()
    writers = []
    progress = Progress(len(tasks), label=name, stream=progress_stream)
    try:
        writers = [tf.io.TFRecordWriter(str(partial_directory / shard)) for shard in shard_names]
        for outcome in convert_all(tasks, convert, num_workers):
            for kind, message in outcome.notes:
                tally.add(kind, outcome.annotation_file, message)
            progress.update()
            if outcome.image is None:
                logging.warning("%s: skipped: %s", outcome.image_file, outcome.skip_reason)
                skipped.append({"image_id": outcome.image_id, "file": outcome.image_file,
                                "reason": outcome.skip_reason})
                continue
            shard = counts.written % num_shards
            writers[shard].write(serialize(outcome.image))
            counts.add(outcome.image, shard)
        progress.close()
        for writer in writers:
            writer.close()
        writers = []
        if not counts.written:
            raise ConversionError(f"no image could be converted ({len(skipped)} skipped); see the log")
        summary = {
            "name": name,
            **header,
            "classes": list(class_names),
            **counts.summary(class_names),
            "num_skipped": len(skipped),
            "skipped": skipped,
            "warnings": dict(sorted(tally.counts.items())),
            "warning_examples": {kind: tally.examples[kind] for kind in sorted(tally.examples)},
            "corrected_without_warning": dict(sorted(tally.quiet_counts.items())),
            "order": order_description(shuffle_seed),
            "num_shards": num_shards,
            "shards": shard_names,
            "images_per_shard": counts.images_per_shard,
        }
        for file_name, text in (side_files or {}).items():
            (partial_directory / file_name).write_text(text)
        summary_path = output_directory / summary_name(name)
        summary_path.unlink(missing_ok=True)
        for stale in finished_shards(output_directory, name):
            if stale.name not in shard_names:
                stale.unlink()
        for file_name in [*shard_names, *(side_files or {})]:
            os.replace(partial_directory / file_name, output_directory / file_name)
        write_json_atomically(summary_path, summary)
    finally:
        for writer in writers:
            writer.close()
        shutil.rmtree(partial_directory, ignore_errors=True)
    logging.info("%s: wrote %d images (%d objects) into %d shards in %s; %d skipped; warnings: %s",
                 name, counts.written, summary["num_objects"], num_shards, output_directory, len(skipped),
                 dict(tally.counts) or "none")
    return summary
