"""The TF Object Detection API's ssd_random_crop (ssd.data.augment.tfod_crop) and the "tfod" recipe."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from ssd.config.loading import load_config
from ssd.data.augment import recipe as augment
from ssd.data.augment import tfod_crop
from tests.data.test_augment import encode, textured

HEIGHT, WIDTH = 375, 500
BOXES = np.array([[0.1, 0.2, 0.5, 0.6], [0.45, 0.05, 0.95, 0.3], [0.3, 0.55, 0.7, 0.98],
                  [0.02, 0.9, 0.08, 0.97]], np.float32)


def pixel_coverage(window, boxes):
    """numpy reference: fraction of each box (truncated to whole pixels) inside the window."""
    px = np.floor(np.clip(boxes, 0, 1) * [HEIGHT, WIDTH, HEIGHT, WIDTH])
    ih = np.clip(np.minimum(window[2], px[:, 2]) - np.maximum(window[0], px[:, 0]), 0, None)
    iw = np.clip(np.minimum(window[3], px[:, 3]) - np.maximum(window[1], px[:, 1]), 0, None)
    area = (px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1])
    return ih * iw / area


def inside_fraction(window_n, boxes):
    """numpy reference: fraction of each normalized box's area inside a normalized window."""
    ih = np.clip(np.minimum(window_n[2], boxes[:, 2]) - np.maximum(window_n[0], boxes[:, 0]), 0, None)
    iw = np.clip(np.minimum(window_n[3], boxes[:, 3]) - np.maximum(window_n[1], boxes[:, 1]), 0, None)
    return ih * iw / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def test_the_default_operations_are_the_apis():
    ops = tfod_crop.SSD_RANDOM_CROP
    assert [op.min_object_covered for op in ops] == [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    assert [op.overlap_thresh for op in ops] == [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    assert {op.aspect_ratio_range for op in ops} == {(0.5, 2.0)}
    assert {op.area_range for op in ops} == {(0.1, 1.0)}
    assert {op.clip_boxes for op in ops} == {True} and {op.random_coef for op in ops} == {0.15}
    assert tfod_crop.MAX_ATTEMPTS == 100


@pytest.mark.parametrize("operation", range(7))
def test_windows_respect_area_aspect_and_coverage(operation):
    op = tfod_crop.SSD_RANDOM_CROP[operation]
    sample = tf.function(lambda seed: tfod_crop.sample_distorted_window(
        BOXES, tf.constant([HEIGHT, WIDTH]), seed, op.min_object_covered, op.aspect_ratio_range,
        op.area_range))
    whole = np.array([0, 0, HEIGHT, WIDTH], np.float32)
    cropped = 0
    for i in range(150):
        window = sample(tf.constant([operation, i], tf.int64)).numpy()
        assert np.all(window == np.round(window))  # whole pixels
        assert 0 <= window[0] < window[2] <= HEIGHT and 0 <= window[1] < window[3] <= WIDTH
        if np.array_equal(window, whole):
            continue  # no qualifying draw in 100 (or a draw of the whole image): both allowed
        cropped += 1
        h, w = window[2] - window[0], window[3] - window[1]
        assert 0.1 <= h * w / (HEIGHT * WIDTH) <= 1.0
        # width = round(height * r) with r in [0.5, 2]: within half a pixel of the range
        assert 0.5 - 0.5 / h <= w / h <= 2.0 + 0.5 / h
        # the kernel's corner never touches the far side unless the window spans the image
        assert window[2] < HEIGHT or h == HEIGHT
        assert np.max(pixel_coverage(window, BOXES)) >= op.min_object_covered
    assert cropped >= 100  # these boxes leave every operation plenty of qualifying windows


def test_window_area_and_aspect_fill_their_ranges():
    op = tfod_crop.SSD_RANDOM_CROP[0]
    windows = np.stack([tfod_crop.sample_distorted_window(
        BOXES, tf.constant([HEIGHT, WIDTH]), tf.constant([5, i], tf.int64), 0.0,
        op.aspect_ratio_range, op.area_range).numpy() for i in range(200)])
    h, w = windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]
    areas, ratios = h * w / (HEIGHT * WIDTH), w / h
    assert areas.min() < 0.2 and areas.max() > 0.8
    assert ratios.min() < 0.6 and ratios.max() > 1.7


def test_no_qualifying_window_gives_the_whole_image():
    # a 1x1-pixel object cannot be covered: no window qualifies, the whole image is used
    tiny = np.array([[0.5, 0.5, 0.5, 0.5]], np.float32)
    window = tfod_crop.sample_distorted_window(tiny, tf.constant([HEIGHT, WIDTH]),
                                               tf.constant([1, 2], tf.int64), 0.1, (0.5, 2.0),
                                               (0.1, 1.0))
    np.testing.assert_array_equal(window.numpy(), [0, 0, HEIGHT, WIDTH])


def test_without_boxes_the_image_stands_for_the_box():
    # covering 0.5 of the image means a window of at least half its area
    for i in range(30):
        window = tfod_crop.sample_distorted_window(
            np.zeros([0, 4], np.float32), tf.constant([HEIGHT, WIDTH]),
            tf.constant([3, i], tf.int64), 0.5, (0.5, 2.0), (0.1, 1.0)).numpy()
        assert (window[2] - window[0]) * (window[3] - window[1]) >= 0.5 * HEIGHT * WIDTH


def test_pruning_keeps_by_the_fraction_inside_not_by_the_centre():
    window = tf.constant([0.0, 0.0, 100.0, 100.0])  # the top-left quarter of a 200x200 image
    boxes = np.array([[0.3, 0.3, 0.9, 0.9],     # centre (0.6, 0.6) outside, 1/9 of it inside
                      [0.1, 0.1, 0.4, 0.4],     # wholly inside
                      [0.6, 0.6, 0.8, 0.8],     # wholly outside
                      [0.5, 0.0, 0.7, 0.2]],    # touches the window's bottom edge only
                     np.float32)
    projected, keep = tfod_crop.prune_and_project(boxes, window, tf.constant([200, 200]), 0.1, True)
    np.testing.assert_array_equal(keep.numpy(), [True, True, False, False])
    np.testing.assert_allclose(projected.numpy()[:2], [[0.6, 0.6, 1.0, 1.0], [0.2, 0.2, 0.8, 0.8]],
                               atol=1e-6)
    _, keep = tfod_crop.prune_and_project(boxes, window, tf.constant([200, 200]), 0.2, True)
    np.testing.assert_array_equal(keep.numpy(), [False, True, False, False])  # 1/9 < 0.2
    unclipped, _ = tfod_crop.prune_and_project(boxes, window, tf.constant([200, 200]), 0.1, False)
    np.testing.assert_allclose(unclipped.numpy()[0], [0.6, 0.6, 1.8, 1.8], atol=1e-6)


def test_ssd_random_crop_statistics():
    run = tf.function(lambda seed: tfod_crop.ssd_random_crop(BOXES, tf.constant([HEIGHT, WIDTH]), seed))
    n = 700
    operations, untouched = [], 0
    for i in range(n):
        window, boxes, keep, operation = (t.numpy() for t in run(tf.constant([9, i], tf.int64)))
        op = tfod_crop.SSD_RANDOM_CROP[int(operation)]
        operations.append(int(operation))
        # float32, as the crop computes it (a box edge may sit exactly on the window's)
        window_n = window / np.array([HEIGHT, WIDTH, HEIGHT, WIDTH], np.float32)
        if np.array_equal(window_n, [0, 0, 1, 1]):
            untouched += 1
        fraction = inside_fraction(window_n, BOXES)
        gaps = np.stack([BOXES[:, 0] - window_n[2], window_n[0] - BOXES[:, 2],
                         BOXES[:, 1] - window_n[3], window_n[1] - BOXES[:, 3]])
        outside = np.any(gaps >= 0, axis=0)
        expected_keep = ~outside & (fraction >= op.overlap_thresh)
        expected_keep |= np.array_equal(window_n, [0, 0, 1, 1])
        # a box edge on the window's edge, or a fraction at the threshold, is decided by the
        # last bit of float32 arithmetic: compare the others
        clear = (np.min(np.abs(gaps), axis=0) > 1e-5) & (np.abs(fraction - op.overlap_thresh) > 1e-5)
        np.testing.assert_array_equal(keep[clear], expected_keep[clear])
        kept = boxes[keep]
        assert np.all((kept >= 0) & (kept <= 1))  # clipped
        reference = np.clip((BOXES[keep] - np.tile(window_n[:2], 2)) /
                            np.tile(window_n[2:] - window_n[:2], 2), 0, 1)
        np.testing.assert_allclose(kept, reference, atol=1e-5)
    counts = np.bincount(operations, minlength=7)
    assert counts.min() > n / 7 * 0.6 and counts.max() < n / 7 * 1.4  # uniform over the 7
    # random_coef 0.15 keeps the image; a draw that spans it or finds no window adds a little
    assert 0.10 < untouched / n < 0.30


def test_tfod_recipe_flips_and_crops_only(tmp_path):
    pixels = np.full((120, 160, 3), (200, 40, 90), np.uint8)
    encoded = encode(pixels, "PNG")
    # photometric and zoom-out fields on: the tfod recipe reads neither
    config = dataclasses.replace(load_config("ssdlite300_mobilenetv2_coco_tfod").data,
                                 photometric=True, expansion_probability=1.0)
    run = tf.function(lambda seed: augment.augment_for_training(
        encoded, BOXES, tf.constant([1, 2, 3, 4]), tf.zeros([4], tf.bool), seed, config, 300))
    for i in range(20):
        out = run(tf.constant([2, i], tf.int64))
        image = out["image"].numpy()
        assert image.shape == (300, 300, 3)
        # a uniform image stays its colour in [-1, 1]: no distortion, no mean-coloured canvas
        np.testing.assert_allclose(image, np.broadcast_to([200 / 127.5 - 1, 40 / 127.5 - 1,
                                                           90 / 127.5 - 1], image.shape), atol=1e-4)
        boxes = out["boxes"].numpy()
        assert np.all((boxes >= 0) & (boxes <= 1))
        assert len(boxes) == len(out["labels"])


def test_tfod_recipe_output_matches_the_crop_and_flip(tmp_path):
    pixels = textured(90, 120)
    encoded = encode(pixels, "PNG")
    config = dataclasses.replace(load_config("ssdlite300_mobilenetv2_coco_tfod").data,
                                 flip_probability=0.0)
    seed = tf.constant([4, 1], tf.int64)
    out = augment.augment_for_training(encoded, BOXES, tf.constant([1, 2, 3, 4]),
                                       tf.zeros([4], tf.bool), seed, config, 300)
    geometry_seed = augment.split_seed(seed, 3)[0]
    _, projected, keep, _ = tfod_crop.ssd_random_crop(BOXES, tf.constant([90, 120]), geometry_seed)
    np.testing.assert_allclose(out["boxes"].numpy(), projected.numpy()[keep.numpy()], atol=1e-6)
    np.testing.assert_array_equal(out["labels"].numpy(), np.array([1, 2, 3, 4])[keep.numpy()])
