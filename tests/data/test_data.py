import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd.modeling.anchors import generate_anchors
from ssd.config.loading import load_config
from ssd.data.input_fn import make_input_fn
from ssd.data.record_files import resolve_files
from ssd.modes import ModeKeys
from ssd.data.records import make_example, shard_name

MEAN = np.array([123.68, 116.78, 103.94], np.float32)
CLASSES = ["circle", "square", "triangle"]


def tiny_config(**overrides):
    values = {"model.num_classes": 4, "data.class_names": CLASSES, "train.batch_size": 4,
              "eval.batch_size": 2, "data.shuffle_buffer": 64}
    values.update(overrides)
    return load_config("ssd300_voc0712", values)


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def make_record(index: int, rng: np.random.Generator, num_boxes: int, difficult=None, is_crowd=None):
    height, width = int(rng.integers(64, 120)), int(rng.integers(64, 160))
    pixels = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(pixels).resize((width, height)))
    boxes = []
    for _ in range(num_boxes):
        y0, x0 = rng.uniform(0, 0.6, 2)
        h, w = rng.uniform(0.2, 0.4, 2)
        boxes.append([y0, x0, y0 + h, x0 + w])
    labels = [int(v) for v in rng.integers(1, 4, num_boxes)]
    difficult = difficult if difficult is not None else [0] * num_boxes
    example = make_example(encoded=jpeg(pixels), image_format="jpeg", height=height, width=width,
                           filename=f"img{index}.jpg", source_id=f"id{index:03d}", boxes=boxes,
                           labels=labels, texts=[CLASSES[i - 1] for i in labels],
                           difficult=difficult, truncated=[0] * num_boxes, is_crowd=is_crowd)
    return example, dict(pixels=pixels, boxes=np.array(boxes, np.float32).reshape(-1, 4),
                         labels=labels, difficult=difficult, source_id=f"id{index:03d}")


def write_shards(directory, num_records: int, num_shards: int, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    truth = {}
    writers = [tf.io.TFRecordWriter(str(directory / shard_name("data", i, num_shards)))
               for i in range(num_shards)]
    for i in range(num_records):
        example, info = make_record(i, rng, num_boxes=1 + i % 3, **kwargs)
        writers[i % num_shards].write(example.SerializeToString())
        truth[info["source_id"]] = info
    for writer in writers:
        writer.close()
    return truth


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("records")
    truth = write_shards(directory, num_records=12, num_shards=4)
    return directory, truth


def test_resolve_files_forms_and_error_naming_the_pattern(shards, tmp_path):
    directory, _ = shards
    everything = resolve_files(directory)
    assert len(everything) == 4
    assert resolve_files(str(directory / "data-0000[01]-*")) == everything[:2]
    comma = f"{directory / 'data-00000-*'},{directory / 'data-00003-*'}"
    assert resolve_files(comma) == [everything[0], everything[3]]
    assert resolve_files([everything[2], str(directory / "data-00002-*")]) == [everything[2]]
    missing = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(FileNotFoundError, match="nothing-"):
        make_input_fn(missing, tiny_config(), ModeKeys.TRAIN)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        resolve_files(tmp_path)  # a directory without *-of-* files


def test_directory_of_several_data_sets_is_refused_not_mixed(tmp_path):
    for name in ("train", "test"):
        (tmp_path / f"{name}-00000-of-00001").write_bytes(b"")
    with pytest.raises(ValueError, match=r"several data sets \(test, train\).*train-\*|test-\*"):
        resolve_files(tmp_path)
    assert resolve_files(str(tmp_path / "train-*")) == [str(tmp_path / "train-00000-of-00001")]


def test_a_glob_leaves_out_the_converters_side_files_but_a_named_file_is_taken(tmp_path):
    for name in ("shards-00000-of-00002", "shards-00001-of-00002", "shards_summary.json",
                 "shards_categories.json"):
        (tmp_path / name).write_bytes(b"")
    shards = [str(tmp_path / "shards-00000-of-00002"), str(tmp_path / "shards-00001-of-00002")]
    assert resolve_files(str(tmp_path / "shards*")) == shards
    assert resolve_files(str(tmp_path / "shards_summary.json")) == [str(tmp_path / "shards_summary.json")]
    with pytest.raises(FileNotFoundError, match="only the converter's side files.*shards_summary.json"):
        resolve_files(str(tmp_path / "shards_*"))


def test_eval_returns_the_written_boxes_padded_per_batch(shards):
    directory, truth = shards
    config = tiny_config(**{"eval.batch_size": 5})
    batches = list(make_input_fn(directory, config, ModeKeys.EVAL)())
    assert [b[0]["image"].shape[0] for b in batches] == [5, 5, 2]  # every record, no drop
    seen = set()
    for features, labels in batches:
        assert features["image"].shape[1:] == (300, 300, 3)
        assert features["image"].dtype == tf.float32
        width = labels["boxes"].shape[1]
        assert width == int(tf.reduce_max(labels["num_boxes"]))  # padded to the batch's largest
        for i, image_id in enumerate(features["image_id"].numpy()):
            info = truth[image_id.decode()]
            seen.add(image_id.decode())
            n = int(labels["num_boxes"][i])
            np.testing.assert_array_equal(labels["boxes"][i, :n].numpy(), info["boxes"])
            assert labels["labels"][i, :n].numpy().tolist() == info["labels"]
            assert not labels["labels"][i, n:].numpy().any()  # padding is label 0
            difficult = [bool(d) for d in info["difficult"]]
            assert labels["difficult"][i, :n].numpy().tolist() == difficult
            assert features["original_shape"][i].numpy().tolist() == list(info["pixels"].shape[:2])
            decoded = tf.io.decode_jpeg(jpeg(info["pixels"]), channels=3)
            expected = (tf.image.resize(tf.cast(decoded, tf.float32), [300, 300]).numpy()
                        - MEAN)[..., ::-1]
            np.testing.assert_allclose(features["image"][i].numpy(), expected, atol=1e-3)
    assert seen == set(truth)


def test_predict_yields_features_only(shards):
    directory, truth = shards
    batches = list(make_input_fn(directory, tiny_config(), ModeKeys.PREDICT)())
    assert all(isinstance(b, dict) and set(b) == {"image", "image_id", "original_shape"}
               for b in batches)
    assert sum(b["image"].shape[0] for b in batches) == len(truth)


def test_encoded_images_are_the_records_own_bytes(shards):
    """For exported models, which decode and resize themselves: the record's encoded image, with
    the same ids, shapes and labels as the preprocessed batches."""
    directory, truth = shards
    config = tiny_config(**{"eval.batch_size": 5})
    encoded = list(make_input_fn(directory, config, ModeKeys.EVAL, encoded_images=True)())
    preprocessed = list(make_input_fn(directory, config, ModeKeys.EVAL)())
    assert len(encoded) == len(preprocessed) == 3
    for (features, labels), (reference, reference_labels) in zip(encoded, preprocessed):
        assert features["image"].dtype == tf.string and features["image"].shape.rank == 1
        np.testing.assert_array_equal(features["image_id"], reference["image_id"])
        np.testing.assert_array_equal(features["original_shape"], reference["original_shape"])
        np.testing.assert_array_equal(labels["boxes"], reference_labels["boxes"])
        for image_id, data in zip(features["image_id"].numpy(), features["image"].numpy()):
            assert data == jpeg(truth[image_id.decode()]["pixels"])
    with pytest.raises(ValueError, match="encoded_images: training needs"):
        make_input_fn(directory, config, ModeKeys.TRAIN, encoded_images=True)


def decode_numpy(encodings, anchors, variances):
    a_cy, a_cx = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    a_h, a_w = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cy = encodings[:, 0] * variances[0] * a_h + a_cy
    cx = encodings[:, 1] * variances[1] * a_w + a_cx
    h = np.exp(encodings[:, 2] * variances[2]) * a_h
    w = np.exp(encodings[:, 3] * variances[3]) * a_w
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1)


def test_train_batches_and_targets_decode_back_to_the_ground_truth(shards):
    directory, truth = shards
    config = tiny_config(**{"data.augmentation": "none", "data.seed": 1})
    anchors = generate_anchors(config)
    assert anchors.shape == (8732, 4)
    features, labels = next(iter(make_input_fn(directory, config, ModeKeys.TRAIN)()))
    assert features["image"].shape == (4, 300, 300, 3) and features["image"].dtype == tf.float32
    assert features["original_shape"].shape == (4, 2) and features["image_id"].dtype == tf.string
    assert labels["cls_targets"].shape == (4, 8732) and labels["cls_targets"].dtype == tf.int32
    assert labels["loc_targets"].shape == (4, 8732, 4) and labels["match_iou"].shape == (4, 8732)
    for i, image_id in enumerate(features["image_id"].numpy()):
        info = truth[image_id.decode()]
        cls = labels["cls_targets"][i].numpy()
        positive = cls > 0
        assert positive.sum() >= len(info["labels"])  # every ground truth gets a default box
        boxes = decode_numpy(labels["loc_targets"][i].numpy()[positive], anchors[positive],
                             config.matching.variances)
        # every positive decodes to one of the ground truths, with its label
        distance = np.abs(boxes[:, None, :] - info["boxes"][None]).max(axis=2)
        nearest = distance.argmin(axis=1)
        assert distance.min(axis=1).max() < 1e-4
        np.testing.assert_array_equal(cls[positive], np.array(info["labels"])[nearest])
        assert set(nearest) == set(range(len(info["labels"])))
        assert not labels["loc_targets"][i].numpy()[~positive].any()


@pytest.mark.slow
def test_paper_augmentation_batches_have_valid_targets(shards):
    directory, _ = shards
    config = tiny_config(**{"data.seed": 2})
    dataset = make_input_fn(directory, config, ModeKeys.TRAIN)()
    for features, labels in dataset.take(3):
        assert features["image"].shape == (4, 300, 300, 3)
        assert np.isfinite(features["image"].numpy()).all()
        cls = labels["cls_targets"].numpy()
        assert cls.min() >= -1 and cls.max() <= 3
        assert np.isfinite(labels["loc_targets"].numpy()).all()


@pytest.mark.slow
def test_images_without_boxes_and_difficult_only_images_are_all_background(tmp_path):
    rng = np.random.default_rng(5)
    with tf.io.TFRecordWriter(str(tmp_path / "x-00000-of-00001")) as writer:
        empty, _ = make_record(0, rng, num_boxes=0)
        hard, _ = make_record(1, rng, num_boxes=2, difficult=[1, 1])
        writer.write(empty.SerializeToString())
        writer.write(hard.SerializeToString())
    config = tiny_config(**{"train.batch_size": 2, "data.seed": 0})
    _, labels = next(iter(make_input_fn(tmp_path, config, ModeKeys.TRAIN)()))
    assert not labels["cls_targets"].numpy().any()
    assert not labels["loc_targets"].numpy().any()
    # the Caffe setting keeps difficult objects as targets
    config = tiny_config(**{"train.batch_size": 2, "data.seed": 0,
                            "matching.use_difficult": True, "data.augmentation": "none"})
    features, labels = next(iter(make_input_fn(tmp_path, config, ModeKeys.TRAIN)()))
    positives = (labels["cls_targets"].numpy() > 0).sum(axis=1)
    ids = [i.decode() for i in features["image_id"].numpy()]
    assert positives[ids.index("id001")] >= 2 and positives[ids.index("id000")] == 0


def test_crowd_regions_are_never_training_targets_but_reach_evaluation(tmp_path):
    rng = np.random.default_rng(6)
    with tf.io.TFRecordWriter(str(tmp_path / "x-00000-of-00001")) as writer:
        crowd, _ = make_record(0, rng, num_boxes=2, is_crowd=[1, 1])
        mixed, _ = make_record(1, rng, num_boxes=2, is_crowd=[0, 1])
        writer.write(crowd.SerializeToString())
        writer.write(mixed.SerializeToString())
    # even the setting that keeps difficult objects drops crowd regions
    config = tiny_config(**{"train.batch_size": 2, "data.seed": 0, "matching.use_difficult": True,
                            "data.augmentation": "none"})
    features, labels = next(iter(make_input_fn(tmp_path, config, ModeKeys.TRAIN)()))
    positives = (labels["cls_targets"].numpy() > 0).sum(axis=1)
    ids = [i.decode() for i in features["image_id"].numpy()]
    assert positives[ids.index("id000")] == 0 and positives[ids.index("id001")] >= 1
    _, eval_labels = next(iter(make_input_fn(tmp_path, config, ModeKeys.EVAL)()))
    assert eval_labels["is_crowd"].numpy().tolist() == [[True, True], [False, True]]


@pytest.mark.parametrize("num_shards", [4, 1])
def test_input_context_gives_disjoint_shares_and_per_replica_batches(tmp_path, num_shards):
    truth = write_shards(tmp_path, num_records=12, num_shards=num_shards)
    config = tiny_config(**{"data.augmentation": "none"})
    input_fn = make_input_fn(tmp_path, config, ModeKeys.TRAIN)
    shares = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        ids = []
        for features, labels in input_fn(context).take(3):  # one epoch of the share
            assert features["image"].shape[0] == 2 and labels["cls_targets"].shape[0] == 2
            ids.extend(i.decode() for i in features["image_id"].numpy())
        assert len(set(ids)) == 6
        shares.append(set(ids))
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(truth)


@pytest.mark.slow
def test_same_seed_gives_the_same_batches(shards):
    directory, _ = shards
    config = tiny_config(**{"data.seed": 7})
    input_fn = make_input_fn(directory, config, ModeKeys.TRAIN)
    runs = [[tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in input_fn().take(2)]
            for _ in range(2)]
    for first, second in zip(*runs):
        for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(second)):
            np.testing.assert_array_equal(a, b)
    other = next(iter(make_input_fn(directory, tiny_config(**{"data.seed": 8}),
                                    ModeKeys.TRAIN)()))
    assert not np.array_equal(other[0]["image"].numpy(), runs[0][0][0]["image"])


@pytest.mark.slow  # AutoGraph's conversion of the augmentation takes seconds
@pytest.mark.parametrize("mode", [ModeKeys.TRAIN, ModeKeys.EVAL])
def test_the_pipeline_without_autograph_gives_the_elements_autograph_gave(shards, monkeypatch, mode):
    from ssd.data import input_fn as input_fn_module

    directory, _ = shards
    config = tiny_config(**{"data.seed": 7})  # the VOC recipe: photometric, zoom-out, crops

    def batches():
        dataset = make_input_fn(directory, config, mode)()
        return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in dataset.take(3)]

    unconverted = batches()
    monkeypatch.setattr(input_fn_module, "_unconverted", lambda fn: fn)  # AutoGraph converts again
    converted = batches()
    assert len(unconverted) == len(converted) == 3
    for ours, autograph in zip(unconverted, converted):
        for a, b in zip(tf.nest.flatten(ours), tf.nest.flatten(autograph)):
            np.testing.assert_array_equal(a, b)
