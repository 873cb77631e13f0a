"""TFRecord files of a data set: finding them, checking them up front, and reading them so that
a damaged file is named in the error instead of TensorFlow's bare "corrupted record at N".

Order: the converter writes the images of its (sorted) order round-robin over the shards, so
every shard spans the whole data set in that order, and shards read side by side would replay
it. `read_checked` therefore reads all shards at once, in a new file order on every pass, each
starting at a random record and wrapping around; at any moment the open files sit at
independent places of the data set, and the record-level shuffle after them mixes those.

Damage: TensorFlow's record reader stops a file at its first damaged record (length or data
checksum wrong, or the file ends inside a record) with an error that does not name the file.
`read_checked` reads every file as its own dataset and counts the bytes of its records: a file
read to its end without damage is exactly the sum of its records plus 16 bytes of framing each.
The reader's stop is turned into the end of that file's records, and the byte count that falls
short of the file size into an error naming the file, the number of readable records and the
image of the last one. No record is skipped silently: reading fails at that point.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Sequence

import tensorflow as tf
from google.protobuf.message import DecodeError

from ssd.data import records
from ssd.errors import UserError

RECORD_FRAMING_BYTES = 16  # length (8) and its checksum (4) before the data, data checksum after
MAX_OPEN_FILES = 256  # files read at the same time (every shard of VOC, COCO, ...)
READ_BUFFER_BYTES = 1 << 20  # per open file, shrunk when many are open (READ_BUFFERS_TOTAL)
READ_BUFFERS_TOTAL = 64 << 20
MIN_READ_BUFFER_BYTES = 64 << 10


# the message of _checked_file inside TensorFlow's assertion error; every hint ends so
_DAMAGED = re.compile(r"assertion failed: \[(.*?: a record is damaged .*?rewrite it)",
                      re.DOTALL)


class DataError(UserError, ValueError):
    """Input files that cannot be used as this project's TFRecords; the message names the file."""


@dataclasses.dataclass(frozen=True)
class RecordFile:
    """A checked input file: its size, and the size of its first record (0 when empty)."""
    path: str
    size: int
    first_record_bytes: int

    @property
    def estimated_records(self) -> int:
        """Records in the file if they were all the size of the first (at least 1)."""
        if not self.size:
            return 1
        return max(1, round(self.size / (self.first_record_bytes + RECORD_FRAMING_BYTES)))


def _directory_shards(directory: str) -> list[str]:
    """The shards of the one data set in `directory`. A converter's output directory often holds
    the training and the test set side by side: several names are refused rather than mixed."""
    shards = [f for f in tf.io.gfile.glob(os.path.join(directory, records.SHARD_PATTERN))
              if records.parse_shard_name(f) is not None and not tf.io.gfile.isdir(f)]
    names = sorted({records.parse_shard_name(f)[0] for f in shards})
    if len(names) > 1:
        raise DataError(f"directory {directory} holds several data sets ({', '.join(names)}); "
                         f"pass a file pattern such as {os.path.join(directory, names[0])}-*")
    return shards


def resolve_files(file_pattern: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Files named by a glob, comma-separated globs, a directory (the `<name>-N-of-M` shards of
    its one data set) or a list of any of these; sorted, without duplicates. A glob leaves out
    the converters' side files (`<name>_summary.json`, `<name>_categories.json`), which `<name>*`
    matches too. Raises FileNotFoundError naming the pattern when nothing matches, DataError for
    a directory of several data sets."""
    if isinstance(file_pattern, (str, os.PathLike)):
        patterns = [p.strip() for p in os.fspath(file_pattern).split(",") if p.strip()]
    else:
        patterns = [os.fspath(p) for p in file_pattern]
    files: set[str] = set()
    side_files = []
    for pattern in patterns:
        if tf.io.gfile.isdir(pattern):
            files.update(_directory_shards(pattern))
            continue
        matched = [f for f in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(f)]
        if glob.has_magic(pattern):
            side_files += [f for f in matched if records.is_side_file(f)]
            matched = [f for f in matched if not records.is_side_file(f)]
        files.update(matched)
    if not files:
        only = f"; only the converter's side files {sorted(side_files)}" if side_files else ""
        raise FileNotFoundError(f"no input files match {file_pattern!r}{only} "
                                f"(a directory means its {records.SHARD_PATTERN} files)")
    return sorted(files)


def resolve_record_files(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """`resolve_files`, with its errors as DataError."""
    try:
        return resolve_files(data)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(str(e)) from None


def count_records(files: Sequence[str]) -> int:
    """Number of records in the files; an unreadable file raises DataError naming it."""
    total = 0
    for path in files:
        try:
            total += int(tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
        except tf.errors.OpError as e:
            raise DataError(f"{path}: not a readable TFRecord file ({first_line(e)})") from None
    return total


def where_images_are(path: str) -> str:
    """How to find which images a shard held (for error messages)."""
    shard = records.parse_shard_name(path)
    if shard is None:
        return "run the converter again to rewrite it"
    name, index, count = shard
    summary = os.path.join(os.path.dirname(path), records.summary_name(name))
    held = (f"one image in every {count} of the conversion's order, from image {index + 1} on"
            if count > 1 else "every image of the conversion")
    return (f"the shard held {held} (the conversion is described in {summary}); run the "
            f"converter again to rewrite it")


def first_line(error: tf.errors.OpError) -> str:
    """The first line of a TensorFlow error, without its op and function decorations."""
    message = error.message.splitlines()[0] if error.message else type(error).__name__
    return message.split("}}")[-1].split(" [Op:")[0].strip()


def _check_first_record(path: str) -> RecordFile:
    """Raises DataError unless the file's first record reads as an image example."""
    owner = records.side_file_data_set(path)
    if owner is not None:
        shards = os.path.join(os.path.dirname(path), f"{owner}-*")
        raise DataError(f"{path}: the converter's description of the data set {owner}, not a "
                        f"TFRecord file; pass its shards instead, e.g. {shards}")
    try:
        size = tf.io.gfile.stat(path).length
    except tf.errors.OpError as e:
        raise DataError(f"{path}: cannot be read ({first_line(e)})") from None
    if size == 0:
        return RecordFile(path, 0, 0)
    try:
        first = [r.numpy() for r in tf.data.TFRecordDataset(path).take(1)]
    except tf.errors.OpError as e:
        raise DataError(f"{path}: not a TFRecord file, or damaged at its start "
                        f"({first_line(e)}); {where_images_are(path)}") from None
    if not first:  # the reader sees a few bytes shorter than a record header as the end
        raise DataError(f"{path}: not a TFRecord file, or damaged at its start ({size} bytes, "
                        f"no complete record); {where_images_are(path)}")
    first = first[0]
    try:
        example = tf.train.Example.FromString(first)
    except DecodeError:
        example = None
    if example is None or records.ENCODED not in example.features.feature:
        raise DataError(f"{path}: a TFRecord file, but its records are not image examples "
                        f"(no {records.ENCODED}; write them with dataset/convert_voc.py)")
    return RecordFile(path, size, len(first))


def check_record_files(files: Sequence[str]) -> list[RecordFile]:
    """Cheap up-front check of input files: each is readable, and its first record (checksums
    included) is an image example. Raises DataError naming the first bad file, or when all of
    them are empty."""
    checked = [_check_first_record(os.fspath(f)) for f in files]
    if files and not any(f.size for f in checked):
        raise DataError(f"no records in {', '.join(files[:3])}{' ...' if len(files) > 3 else ''}"
                        f" (all {len(files)} files are empty)")
    return checked


def data_error_from(error: tf.errors.OpError) -> DataError | None:
    """The DataError behind a failed read of `read_checked` (its message without TensorFlow's
    decorations), None for other errors."""
    match = _DAMAGED.search(error.message or "")
    return DataError(match.group(1).replace("\\'", "'")) if match else None


def _checked_file(path: tf.Tensor, size: tf.Tensor, hint: tf.Tensor, start: tf.Tensor,
                  buffer_size: int) -> tf.data.Dataset:
    """The records of one file from record `start` on, then those before it; an error naming
    the file where the reader stopped before reading all of it."""
    def count(state, element):
        consumed, number, last = state
        record, is_end = element
        framing = tf.where(is_end, tf.constant(0, tf.int64), RECORD_FRAMING_BYTES)
        consumed = consumed + tf.cast(tf.strings.length(record), tf.int64) + framing
        number = number + tf.cast(tf.logical_not(is_end), tf.int64)
        last = tf.where(is_end, last, record)
        return (consumed, number, last), (record, is_end, consumed, number, last)

    def verify(record, is_end, consumed, number, last):
        def fail():
            image = tf.io.parse_single_example(
                last, {records.FILENAME: tf.io.FixedLenFeature([], tf.string, "")})
            message = tf.strings.join([
                path, ": a record is damaged (truncated or corrupted) after ",
                tf.strings.as_string(number), " readable records (the last one read: image '",
                image[records.FILENAME], "'); ", hint])
            with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
                return tf.identity(record)
        complete = tf.logical_or(tf.logical_not(is_end), tf.equal(consumed, size))
        return tf.cond(complete, lambda: record, fail), is_end

    def reader():
        # the reader's stop at a damaged record becomes the end of these records; the byte
        # count in `verify` turns it back into an error
        return tf.data.TFRecordDataset(path, buffer_size=buffer_size).ignore_errors()

    # every record once, whatever `start` (beyond the last record: the file in its order)
    rotated = reader().skip(start).concatenate(reader().take(start))
    end = tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(True)))
    state = (tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.constant(b""))
    checked = (rotated.map(lambda r: (r, tf.constant(False))).concatenate(end)
               .scan(state, count).map(verify))
    return checked.filter(lambda record, is_end: tf.logical_not(is_end)).map(
        lambda record, is_end: record)


def read_checked(files: Sequence[RecordFile], shuffle: bool, seed: int | None,
                 deterministic: bool) -> tf.data.Dataset:
    """Serialized records of `files` (from check_record_files), all files read at the same time
    one record each in turn (up to MAX_OPEN_FILES). With `shuffle`, on every pass the file order
    is new and each file starts at a random record (wrapping around); without, every file is
    read from its start in the given order. A damaged record fails the reading with an error
    naming its file."""
    cycle = max(1, min(len(files), MAX_OPEN_FILES))
    buffer_size = max(MIN_READ_BUFFER_BYTES, min(READ_BUFFER_BYTES, READ_BUFFERS_TOTAL // cycle))
    dataset = tf.data.Dataset.from_tensor_slices((
        [f.path for f in files], tf.constant([f.size for f in files], tf.int64),
        [where_images_are(f.path) for f in files],
        tf.constant([f.estimated_records for f in files], tf.int64)))
    if shuffle:
        if len(files) > 1:
            dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, draws).map(
            lambda file, draw: (*file[:3], tf.math.floormod(draw, file[3])))
    else:
        dataset = dataset.map(lambda path, size, hint, _: (path, size, hint,
                                                            tf.constant(0, tf.int64)))
    return dataset.interleave(
        lambda path, size, hint, start: _checked_file(path, size, hint, start, buffer_size),
        cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic)
