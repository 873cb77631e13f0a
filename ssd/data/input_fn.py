"""tf.data input pipelines from TFRecords (schema in ssd.data.records) for training, evaluation and
prediction, in the Estimator style: `make_input_fn(file_pattern, config, mode)` returns
`input_fn(input_context=None) -> tf.data.Dataset`.

TRAIN yields (features, labels) batches of augmented images with their SSD targets:
  features {"image" [B, S, S, 3] float32 BGR minus the mean, "image_id" [B] string,
            "original_shape" [B, 2] int32 (height, width)}
  labels   {"cls_targets" [B, A] int32, "loc_targets" [B, A, 4] float32, "match_iou" [B, A]}.
EVAL yields the same features (resized only) and the ground truths padded per batch:
  labels   {"boxes" [B, M, 4], "labels" [B, M] int32 (0 = padding), "difficult" [B, M] bool,
            "num_boxes" [B] int32}.
PREDICT yields the features only. With `encoded_images` (EVAL and PREDICT), "image" is the
record's encoded image, a string [B], for models that decode and resize themselves (exported
models, ssd.inference.exported).

Reading (ssd.data.record_files): the files are checked up front (readable, first record an image
example); all shards are then read at the same time, one record from each in turn (for
training: in a new file order on every pass, each shard from a random record on), before the
record-level shuffle buffer; a damaged record fails the reading with an error naming its file.

Randomness is stateless: every training example gets the seed (base, index of the example in
the stream), so with `data.seed` set the batches are the same on every run.
"""

from __future__ import annotations

import random

import numpy as np
import tensorflow as tf

from ssd.data.augment import recipe as augment
from ssd.modeling.anchors import generate_anchors
from ssd.modeling.boxes import encode_targets
from ssd.config.loading import Config
from ssd.modes import ModeKeys, check_mode
from ssd.data.preprocessing import decode_image, preprocess_image
from ssd.data.record_files import RecordFile, check_record_files, read_checked, resolve_files
from ssd.data.records import parse_example


def _image_id(example: dict[str, tf.Tensor]) -> tf.Tensor:
    return tf.where(tf.equal(example["source_id"], ""), example["filename"], example["source_id"])


def _pipeline_position(input_context) -> tuple[int, int]:
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def _records(files: list[RecordFile], input_context, shuffle_seed: int | None,
             shuffle_files: bool, deterministic: bool) -> tf.data.Dataset:
    """Serialized records of this input pipeline's share.

    Files are sharded between pipelines when there are at least as many files as pipelines;
    otherwise every pipeline reads all files in the same order and keeps every n-th record.
    """
    num_pipelines, index = _pipeline_position(input_context)
    shard_files = len(files) >= num_pipelines
    if shard_files:
        files = files[index::num_pipelines]
    # every pipeline reads the same records in the same order when it keeps every n-th
    dataset = read_checked(files, shuffle=shuffle_files and shard_files, seed=shuffle_seed,
                           deterministic=deterministic)
    if not shard_files:
        dataset = dataset.shard(num_pipelines, index)
    return dataset


def _parallel_calls(config: Config) -> int:
    calls = config.data.num_parallel_calls
    return tf.data.AUTOTUNE if calls == -1 else calls


def _unconverted(fn):
    """`fn` for `Dataset.map` without AutoGraph: the preprocessing states its control flow with
    tf.cond / tf.while_loop itself, and AutoGraph rewriting its ~70 functions took 22 s of the
    VOC recipe's start-up (1.6 s without), for the same elements."""
    return tf.autograph.experimental.do_not_convert(fn)


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_optimization.map_parallelization = True
    return options


def _train_dataset(files: list[RecordFile], config: Config, anchors: np.ndarray,
                   input_context) -> tf.data.Dataset:
    data = config.data
    deterministic = data.seed is not None
    batch_size = config.train.batch_size
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    num_pipelines, index = _pipeline_position(input_context)
    base_seed = data.seed if deterministic else random.SystemRandom().randrange(1 << 31)
    # one stream of per-example seeds per input pipeline
    stream_seed = base_seed * num_pipelines + index
    anchors_tensor = tf.constant(anchors, tf.float32)
    input_size = config.model.input_size

    def prepare(position, serialized):
        example = parse_example(serialized)
        boxes, labels, difficult = example["boxes"], example["labels"], example["difficult"]
        # a crowd region boxes many instances: never a target
        keep = tf.logical_not(example["is_crowd"])
        if not config.matching.use_difficult:
            keep = tf.logical_and(keep, tf.logical_not(difficult))
        boxes, labels, difficult = (tf.boolean_mask(t, keep) for t in (boxes, labels, difficult))
        seed = tf.stack([tf.constant(stream_seed, tf.int64), position])
        sample = augment.augment_for_training(example["encoded"], boxes, labels, difficult, seed,
                                              data, input_size)
        cls_targets, loc_targets, match_iou = encode_targets(
            sample["boxes"], sample["labels"], anchors_tensor, config.matching)
        features = {"image": sample["image"], "image_id": _image_id(example),
                    "original_shape": sample["image_size"]}
        targets = {"cls_targets": cls_targets, "loc_targets": loc_targets,
                   "match_iou": match_iou}
        return features, targets

    # every shard at once, each from a random record, in a new order on every pass (see
    # ssd.data.record_files); the record-level shuffle mixes what they give
    dataset = _records(files, input_context, data.seed, shuffle_files=True,
                       deterministic=deterministic)
    dataset = dataset.shuffle(data.shuffle_buffer, seed=data.seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat().enumerate()
    dataset = dataset.map(_unconverted(prepare), num_parallel_calls=_parallel_calls(config),
                          deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic))


def _eval_dataset(files: list[RecordFile], config: Config, input_context,
                  with_labels: bool, encoded_images: bool = False) -> tf.data.Dataset:
    batch_size = config.eval.batch_size
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)

    def prepare(serialized):
        example = parse_example(serialized)
        image = decode_image(example["encoded"])
        model_input = example["encoded"] if encoded_images else preprocess_image(image, config)
        features = {"image": model_input, "image_id": _image_id(example),
                    "original_shape": tf.shape(image)[:2]}
        if not with_labels:
            return features
        labels = {"boxes": example["boxes"], "labels": example["labels"],
                  "difficult": example["difficult"], "is_crowd": example["is_crowd"],
                  "area": example["area"], "num_boxes": tf.shape(example["labels"])[0]}
        return features, labels

    dataset = _records(files, input_context, None, shuffle_files=False,
                       deterministic=True)
    dataset = dataset.map(_unconverted(prepare), num_parallel_calls=_parallel_calls(config),
                          deterministic=True)
    if with_labels:
        dataset = dataset.padded_batch(batch_size, drop_remainder=False)
    else:
        dataset = dataset.batch(batch_size, drop_remainder=False)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(True))


def make_input_fn(file_pattern, config: Config, mode: str, encoded_images: bool = False):
    """Returns `input_fn(input_context=None) -> tf.data.Dataset` for `mode` (ssd.modes.ModeKeys).

    file_pattern: a glob, comma-separated globs, a directory (its shards) or a list.
    With a `tf.distribute.InputContext`, each input pipeline reads its own share (files, or
    records when there are fewer files than pipelines) in per-replica batches.
    Raises FileNotFoundError when nothing matches, DataError (a ValueError) naming a file that
    is not a readable TFRecord file of image examples; a record damaged further into a file
    fails the reading with an error naming the file. The function's `files` attribute lists the
    files it reads (evaluation looks beside them for a COCO category map). `encoded_images`
    (EVAL, PREDICT): features["image"] is the encoded image instead of the model input.
    """
    mode = check_mode(mode)
    if encoded_images and mode == ModeKeys.TRAIN:
        raise ValueError("encoded_images: training needs the augmented model inputs")
    files = check_record_files(resolve_files(file_pattern))
    anchors = generate_anchors(config) if mode == ModeKeys.TRAIN else None

    def input_fn(input_context=None) -> tf.data.Dataset:
        if mode == ModeKeys.TRAIN:
            return _train_dataset(files, config, anchors, input_context)
        return _eval_dataset(files, config, input_context,
                             with_labels=mode == ModeKeys.EVAL, encoded_images=encoded_images)

    input_fn.files = [f.path for f in files]
    return input_fn
