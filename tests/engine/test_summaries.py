"""Summaries read back with TensorBoard's own event reader and PR-curve plugin."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
from tensorboard.plugins.pr_curve import metadata as pr_metadata
from tensorboard.plugins.pr_curve.pr_curves_plugin import PrCurvesPlugin

from ssd.engine import summaries

# One class, five detections in score order: hit, miss, hit, hit, miss; four objects.
HITS = np.array([1, 0, 1, 1, 0])
NUM_POSITIVES = 4
TP = np.cumsum(HITS)                       # 1 1 2 3 3
COUNTED = np.arange(1, 6)                  # 1 2 3 4 5
RECALL = TP / NUM_POSITIVES                # .25 .25 .5 .75 .75
PRECISION = TP / COUNTED                   # 1 .5 .667 .75 .6


def write_and_read(tmp_path, write):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        write()
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    return events


def values(events, tag):
    return [(event.step, tf.make_ndarray(event.tensor_proto)) for event in events.Tensors(tag)]


def test_scalars_read_back(tmp_path):
    def write():
        summaries.write_scalar("mAP", 0.5, 3)
        summaries.write_scalar("mAP", 0.75, 7)
        summaries.write_scalar("classes/dog", 0.25, 7)

    events = write_and_read(tmp_path, write)
    assert set(events.PluginTagToContent("scalars")) == {"mAP", "classes/dog"}
    assert [(step, float(v)) for step, v in values(events, "mAP")] == [(3, 0.5), (7, 0.75)]
    assert [(step, float(v)) for step, v in values(events, "classes/dog")] == [(7, 0.25)]


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_images_read_back_with_their_size_and_pixels(tmp_path):
    batch = np.zeros((2, 20, 30, 3), np.float32)
    batch[0, :, :15] = 1.0
    batch[1, 5, 7] = (1.0, 0.0, 1.0)
    events = write_and_read(tmp_path, lambda: summaries.write_images("train/images", batch, 5))
    assert list(events.PluginTagToContent("images")) == ["train/images"]
    (step, blobs), = values(events, "train/images")
    assert step == 5 and blobs[:2].tolist() == [b"30", b"20"]  # width, height
    images = [decode(blob) for blob in blobs[2:]]
    assert [image.shape for image in images] == [(20, 30, 3), (20, 30, 3)]
    np.testing.assert_array_equal(images[0], (batch[0] * 255).astype(np.uint8))
    np.testing.assert_array_equal(images[1], (batch[1] * 255).astype(np.uint8))


def test_image_list_pads_images_of_different_sizes(tmp_path):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)
    grey = np.linspace(0.0, 1.0, 16 * 8, dtype=np.float32).reshape(16, 8)
    picture = Image.fromarray(rng.integers(0, 256, (6, 4, 4), dtype=np.uint8), "RGBA")
    events = write_and_read(
        tmp_path, lambda: summaries.write_image_list("eval/detections", [colour, grey, picture], 2))
    (step, blobs), = values(events, "eval/detections")
    assert step == 2 and blobs[:2].tolist() == [b"20", b"16"]
    first, second, third = (decode(blob) for blob in blobs[2:])
    assert first.shape == second.shape == third.shape == (16, 20, 3)
    np.testing.assert_array_equal(first[:10], colour)
    assert (first[10:] == summaries.PADDING_COLOR).all()
    expected_grey = np.round(grey * 255).astype(np.uint8)
    np.testing.assert_array_equal(second[:, :8], np.repeat(expected_grey[..., None], 3, axis=-1))
    assert (second[:, 8:] == summaries.PADDING_COLOR).all()
    np.testing.assert_array_equal(third[:6, :4], np.asarray(picture)[..., :3])
    with pytest.raises(ValueError, match=r"shape \(4, 4, 2\)"):
        summaries.write_image_list("bad", [np.zeros((4, 4, 2), np.uint8)], 0)


def test_pr_curves_read_back_through_the_pr_curve_plugin(tmp_path):
    curves = {"dog": (RECALL, PRECISION),
              "cat": (np.array([]), np.array([])),          # no detections
              "sofa": (np.zeros(2), np.zeros(2))}           # no ground truth
    written = []
    events = write_and_read(tmp_path, lambda: written.extend(summaries.write_pr_curves(
        curves, 11, {"dog": NUM_POSITIVES, "cat": 2, "sofa": 0})))
    assert written == ["precision_recall/dog"]
    content = events.PluginTagToContent("pr_curves")
    assert list(content) == written
    assert pr_metadata.parse_plugin_metadata(content["precision_recall/dog"]).num_thresholds == 5

    (event,) = events.Tensors("precision_recall/dog")
    # the plugin's own reading of a stored step (its method does not use the plugin's state)
    entry = PrCurvesPlugin._make_pr_entry(None, event.step, event.wall_time,
                                          tf.make_ndarray(event.tensor_proto))
    assert entry["step"] == 11
    # lowest threshold first: all five detections, then fewer
    np.testing.assert_allclose(entry["precision"], PRECISION[::-1], rtol=1e-6)
    np.testing.assert_allclose(entry["recall"], RECALL[::-1], rtol=1e-6)
    assert entry["true_positives"] == [3, 3, 2, 1, 1]
    assert entry["false_positives"] == [2, 1, 1, 1, 0]
    assert entry["false_negatives"] == [1, 1, 2, 3, 3]
    assert entry["true_negatives"] == [0] * 5


def test_pr_curve_tensor_derives_positives_and_thins_long_curves():
    derived = summaries.pr_curve_tensor(RECALL, PRECISION)
    np.testing.assert_array_equal(derived[3], NUM_POSITIVES - TP[::-1])

    rng = np.random.default_rng(1)
    hits = rng.random(2000) < 0.4
    tp = np.cumsum(hits)
    recall, precision = tp / 900, tp / np.arange(1, 2001)
    tensor = summaries.pr_curve_tensor(recall, precision, 900, max_points=500)
    assert tensor.shape == (6, 500)
    np.testing.assert_allclose(tensor[5, [0, -1]], [recall[-1], recall[0]], rtol=1e-6)
    np.testing.assert_allclose(tensor[4, [0, -1]], [precision[-1], precision[0]], rtol=1e-6)
    assert (np.diff(tensor[5]) <= 0).all()  # recall falls as the threshold rises
    with pytest.raises(ValueError, match="same number"):
        summaries.pr_curve_tensor(RECALL, PRECISION[:3])
