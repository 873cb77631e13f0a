import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd.data.augment import recipe as augment

from ssd.data.augment import expand_crop

from ssd.data import image_files

from ssd.data.augment import photometric

from ssd.data.augment import window_resize
from ssd.config.loading import load_config

MEAN = np.array([123.68, 116.78, 103.94], np.float32)


def data_config(**changes):
    return dataclasses.replace(load_config("ssd300_voc0712").data, **changes)


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def textured(height, width, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def np_iou(box, boxes):
    """IoU of one [4] box with [N, 4] boxes (numpy reference)."""
    ih = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iw = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ih * iw
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area(box) + area(boxes) - inter)


BOXES = np.array([[0.1, 0.2, 0.5, 0.6], [0.4, 0.05, 0.95, 0.3], [0.3, 0.55, 0.7, 0.98]], np.float32)


@pytest.fixture(scope="module")
def sample_image():
    pixels = textured(72, 96)
    return encode(pixels, "JPEG"), pixels


def test_image_size_reads_jpeg_and_png_headers():
    pixels = textured(37, 53)
    for fmt in ("JPEG", "PNG"):
        assert image_files.image_size(tf.constant(encode(pixels, fmt))).numpy().tolist() == [37, 53]


def test_decode_region_equals_full_decode_sliced():
    pixels = textured(64, 80, seed=3)
    for fmt in ("JPEG", "PNG"):
        data = tf.constant(encode(pixels, fmt))
        full = tf.io.decode_image(data, channels=3).numpy()
        for top, left, h, w in [(0, 0, 64, 80), (5, 7, 30, 41), (10, 33, 54, 47), (0, 79, 64, 1)]:
            part = image_files.decode_region(data, [top, left, h, w], 80).numpy()
            np.testing.assert_array_equal(part, full[top:top + h, left:left + w])


def test_crop_sampler_honours_min_iou_and_patch_shapes():
    config = data_config()
    rng = np.random.default_rng(0)
    canvas = np.array([150, 210])
    chosen = set()
    sample = tf.function(lambda boxes, seed: expand_crop.sample_crop_window(
        boxes, canvas, seed, config.crop_min_ious, config.crop_max_trials,
        config.crop_min_scale, config.crop_max_aspect_ratio))
    for i in range(150):
        n = int(rng.integers(1, 4))
        corners = np.sort(rng.uniform(0, 1, (n, 2, 2)), axis=1)
        boxes = np.concatenate([corners[:, 0], corners[:, 1]], axis=1)  # ymin, xmin, ymax, xmax
        boxes_px = (boxes * np.tile(canvas, 2)).astype(np.float32)
        window, sampler = sample(boxes_px, tf.constant([7, i], tf.int64))
        window, sampler = window.numpy(), int(sampler)
        chosen.add(sampler)
        assert np.all(window == np.round(window))
        assert 0 <= window[0] < window[2] <= canvas[0] and 0 <= window[1] < window[3] <= canvas[1]
        h, w = (window[2:] - window[:2]) / canvas
        if sampler == 0:
            np.testing.assert_array_equal(window, [0, 0, *canvas])
        else:
            # scale s in [0.3, 1] gives h * w = s^2; aspect w / h in [0.5, 2] (pixel rounding)
            assert 0.09 - 0.02 <= h * w <= 1.0 and 0.5 - 0.05 <= w / h <= 2.0 + 0.1
        if 1 <= sampler <= len(config.crop_min_ious):
            assert np_iou(window, boxes_px).max() >= config.crop_min_ious[sampler - 1] - 1e-6
    # IoU >= 0.7 or 0.9 with a random box is rarely reachable; the others all come up
    assert {0, 1, 2, 3, len(config.crop_min_ious) + 1} <= chosen


def test_crop_sampler_without_boxes_uses_only_unconstrained_samplers():
    config = data_config()
    for i in range(20):
        _, sampler = expand_crop.sample_crop_window(
            tf.zeros([0, 4]), [100, 100], tf.constant([1, i], tf.int64), config.crop_min_ious,
            config.crop_max_trials, config.crop_min_scale, config.crop_max_aspect_ratio)
        assert int(sampler) in (0, len(config.crop_min_ious) + 1)


def test_crop_boxes_centre_rule_and_clipping():
    window = np.array([10, 20, 50, 100], np.float32)  # 40 x 80 pixels
    boxes = np.array([
        [0, 0, 30, 60],      # centre (15, 30): inside, clipped to [10, 20, 30, 60]
        [40, 90, 70, 120],   # centre (55, 105): outside
        [45, 10, 55, 30],    # centre (50, 20): on the corner, kept, clipped to [45, 20, 50, 30]
        [12, 30, 12, 40],    # centre inside but no height: dropped
        [0, 0, 8, 200],      # centre (4, 100): above the window
    ], np.float32)
    projected, keep = expand_crop.crop_boxes(boxes, window)
    assert keep.numpy().tolist() == [True, False, True, False, False]
    expected = np.array([[0, 0, 20 / 40, 40 / 80], [35 / 40, 0, 1, 10 / 80]], np.float32)
    np.testing.assert_allclose(projected.numpy()[keep.numpy()], expected, atol=1e-6)


def test_tf1_box_filter_thresholds():
    # (area, height, width): the TF1 reference keeps area in (0.001, 0.9) and sides > 0.025
    boxes = np.array([
        [0.0, 0.0, 0.5, 0.5],      # area 0.25: kept
        [0.0, 0.0, 0.95, 0.95],    # area 0.9025: too large
        [0.0, 0.0, 0.02, 0.5],     # height 0.02: too thin
        [0.0, 0.0, 0.5, 0.02],     # width 0.02: too thin
        [0.0, 0.0, 0.03, 0.03],    # sides 0.03 but area 0.0009: too small
        [0.2, 0.2, 0.25, 0.25],    # sides 0.05, area 0.0025: kept
    ], np.float32)
    keep = expand_crop.tf1_box_filter(tf.constant(boxes)).numpy()
    assert keep.tolist() == [True, False, False, False, False, True]


@pytest.mark.slow
def test_every_box_valid_after_many_augmentations(sample_image):
    encoded, _ = sample_image
    labels = tf.constant([1, 2, 3])
    difficult = tf.constant([False, True, False])
    for mode in ("paper", "tf1"):
        config = data_config(augmentation=mode)
        run = tf.function(lambda seed: augment.augment_for_training(
            encoded, BOXES, labels, difficult, seed, config, 32))
        for i in range(80):
            out = run(tf.constant([11, i], tf.int64))
            boxes = out["boxes"].numpy()
            assert out["image"].shape == (32, 32, 3)
            assert len(boxes) == len(out["labels"]) == len(out["difficult"])
            assert np.all((boxes >= 0) & (boxes <= 1))
            assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
            # labels travel with their difficult flags (only label 2 is difficult)
            np.testing.assert_array_equal(out["difficult"].numpy(), out["labels"].numpy() == 2)
            if mode == "tf1":
                h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
                filtered = np.all((h * w > 0.001) & (h * w < 0.9) & (h > 0.025) & (w > 0.025))
                untouched = boxes.shape == BOXES.shape and (
                    np.allclose(boxes, BOXES) or np.allclose(boxes, expand_crop.flip_boxes(BOXES)))
                assert filtered or untouched


def test_flip_mirrors_pixels_and_boxes_exactly(sample_image):
    encoded, _ = sample_image
    outputs = []
    for probability in (0.0, 1.0):
        config = data_config(flip_probability=probability)
        outputs.append(augment.augment_for_training(
            encoded, BOXES, [1, 2, 3], [False] * 3, tf.constant([3, 4], tf.int64), config, 48))
    plain, flipped = outputs
    np.testing.assert_array_equal(flipped["image"].numpy(), plain["image"].numpy()[:, ::-1])
    expected = plain["boxes"].numpy()[:, [0, 3, 2, 1]] * [1, -1, 1, -1] + [0, 1, 0, 1]
    np.testing.assert_allclose(flipped["boxes"].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(flipped["labels"].numpy(), plain["labels"].numpy())


def test_zoom_out_keeps_box_on_its_pixels_and_fills_with_the_mean():
    height, width = 40, 60
    pixels = np.full((height, width, 3), 90, np.uint8)
    pixels[8:30, 12:45] = [250, 10, 10]  # rows 8..29, columns 12..44
    box = np.array([[8 / height, 12 / width, 30 / height, 45 / width]], np.float32)
    # crop_min_scale 1 makes every crop the whole canvas: the output is the canvas resized
    config = data_config(expansion_probability=1.0, crop_min_scale=1.0, photometric=False,
                         random_interpolation=False, flip_probability=0.0)
    size = 96
    encoded = tf.constant(encode(pixels))
    expanded = 0
    for i in range(12):
        out = augment.augment_for_training(encoded, box, [1], [False],
                                           tf.constant([5, i], tf.int64), config, size)
        rgb = out["image"].numpy()[..., ::-1] + MEAN
        (ymin, xmin, ymax, xmax), = out["boxes"].numpy() * size
        red = np.argwhere(rgb[..., 0] > (250 + 90) / 2)
        # the object's pixels span the box (bilinear resize: within one output pixel)
        assert abs(red[:, 0].min() - ymin) <= 1 and abs(red[:, 0].max() + 1 - ymax) <= 1
        assert abs(red[:, 1].min() - xmin) <= 1 and abs(red[:, 1].max() + 1 - xmax) <= 1
        # where the image lies in the output, from the object's box (22 x 33 image pixels)
        scale = np.array([(ymax - ymin) / 22, (xmax - xmin) / 33])
        top, left = np.array([ymin, xmin]) - scale * [8, 12]
        bottom, right = np.array([top, left]) + scale * [height, width]
        # beyond the image (and the bilinear blend at its edge) the canvas is the mean colour
        margin = np.ceil(scale.max()) + 1
        rows, cols = np.arange(size)[:, None] + 0.5, np.arange(size)[None, :] + 0.5
        canvas = ((rows < top - margin) | (rows > bottom + margin) |
                  (cols < left - margin) | (cols > right + margin))
        inside = ((rows > top + margin) & (rows < bottom - margin) &
                  (cols > left + margin) & (cols < right - margin))
        off_object = ((rows < ymin - margin) | (rows > ymax + margin) |
                      (cols < xmin - margin) | (cols > xmax + margin))
        np.testing.assert_allclose(rgb[inside & off_object], 90.0, atol=1e-3)
        if canvas.any():
            expanded += 1
            np.testing.assert_array_equal(out["image"].numpy()[canvas], 0.0)
            np.testing.assert_allclose(rgb[canvas], np.broadcast_to(MEAN, rgb[canvas].shape),
                                       atol=1e-4)
    assert expanded >= 10  # canvas visible in (nearly) every draw


CANVAS_KERNELS = {"area": ("box", True), "bicubic": ("keyscubic", False),
                  "lanczos3": ("lanczos3", False)}


@pytest.mark.parametrize("method", window_resize.INTERPOLATIONS)
def test_render_window_equals_resizing_the_materialized_canvas(method):
    visible = tf.constant(textured(30, 44, seed=5).astype(np.float32) - 128.0)
    index = window_resize.INTERPOLATIONS.index(method)
    for offset, window, out in [((0, 0), (30, 44), (50, 40)), ((6, 3), (45, 50), (64, 64)),
                                ((0, 9), (30, 70), (20, 24)), ((11, 0), (80, 44), (48, 33)),
                                ((50, 70), (160, 200), (64, 64)), ((120, 150), (150, 194), (40, 50)),
                                ((3, 2), (140, 130), (300, 300))]:
        canvas = tf.pad(visible, [[offset[0], window[0] - 30 - offset[0]],
                                  [offset[1], window[1] - 44 - offset[1]], [0, 0]])
        got = window_resize.render_window(visible, offset, window, out,
                                          tf.constant(index)).numpy()
        if method in ("bilinear", "nearest") or window == (30, 44):
            expected = tf.image.resize(canvas, out, method=method)
        else:
            # documented: with canvas in view these use the ScaleAndTranslate kernels
            kernel, antialias = CANVAS_KERNELS[method]
            expected = tf.raw_ops.ScaleAndTranslate(
                images=canvas[None], size=out, scale=np.divide(out, window).astype(np.float32),
                translation=[0.0, 0.0], kernel_type=kernel, antialias=antialias)[0]
        if method == "area" and window != (30, 44):
            # the box kernel is discontinuous: a sample-position rounding difference can move a
            # tap at exactly half a cell in or out; nothing else may differ
            mismatch = np.abs(got - expected.numpy()) > 2e-3
            assert mismatch.mean() < 0.02
        else:
            np.testing.assert_allclose(got, expected.numpy(), atol=2e-3)


def test_photometric_ops_keep_pixels_in_range_and_commute_with_crops():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 32, 3)).astype(np.float32)
    image[:4] = 0.0
    image[-4:] = 255.0
    image[5:9, :, 1] = 255.0
    for i in range(60):
        seed = tf.constant([9, i], tf.int64)
        for distort in (photometric.distort_colors, photometric.distort_colors_fast):
            out = distort(tf.constant(image), seed).numpy()
            assert out.min() >= 0.0 and out.max() <= 255.0
            crop = distort(tf.constant(image[3:20, 5:27]), seed).numpy()
            np.testing.assert_allclose(crop, out[3:20, 5:27], atol=1e-3)


def test_distort_colors_matches_the_caffe_sequence_with_tf_image_ops():
    rng = np.random.default_rng(2)
    image = tf.constant(rng.integers(0, 256, (16, 20, 3)).astype(np.float32))
    for i in range(40):
        seed = tf.constant([4, i], tf.int64)
        draws = {k: v.numpy() for k, v in photometric._photometric_draws(seed).items()}
        x = tf.clip_by_value(image + draws["brightness"], 0, 255)
        contrast = lambda t: tf.clip_by_value(t * draws["contrast"], 0, 255)
        hsv = lambda t: tf.image.adjust_hue(tf.image.adjust_saturation(t, draws["saturation"]),
                                            draws["hue"])
        x = hsv(contrast(x)) if draws["contrast_first"] else contrast(hsv(x))
        np.testing.assert_allclose(photometric.distort_colors(image, seed).numpy(), x, atol=2e-3)


def test_adjust_saturation_hue_matches_tf_image():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (20, 20, 3)).astype(np.float32)
    image[0] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [7, 7, 7]] * 4
    for saturation, hue in [(1.0, 0.0), (1.4, 0.0), (0.6, 0.0), (1.5, 0.1), (0.5, -0.1),
                            (1.3, 0.07), (0.8, 0.95), (1.0, -0.02)]:
        expected = tf.image.adjust_hue(tf.image.adjust_saturation(image, saturation), hue)
        got = photometric.adjust_saturation_hue(tf.constant(image), saturation, hue)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-3)
        got_bgr = photometric.adjust_saturation_hue(tf.constant(image), saturation, hue, True)
        np.testing.assert_array_equal(got_bgr.numpy(), got.numpy()[..., ::-1])


@pytest.mark.slow
def test_paper_mode_retries_crops_that_would_lose_every_object(sample_image):
    encoded, _ = sample_image
    config = data_config()
    run = tf.function(lambda seed: augment.augment_for_training(
        encoded, BOXES, [1, 2, 3], [False] * 3, seed, config, 32))
    counts = [run(tf.constant([2, i], tf.int64))["boxes"].shape[0] for i in range(80)]
    assert min(counts) >= 1
    # the sampler itself: a tiny box in a corner, patches that cover it with IoU >= 0.1 but
    # miss its centre are never chosen
    canvas = np.array([200, 200])
    box = np.array([[0, 0, 20, 20]], np.float32)
    for i in range(60):
        window, _ = expand_crop.sample_crop_window(
            box, canvas, tf.constant([5, i], tf.int64), config.crop_min_ious,
            config.crop_max_trials, config.crop_min_scale, config.crop_max_aspect_ratio)
        y0, x0, y1, x1 = window.numpy()
        assert y0 <= 10 <= y1 and x0 <= 10 <= x1


def test_tf1_recipe_falls_back_to_the_untouched_image_when_no_box_survives(sample_image):
    encoded, _ = sample_image
    # without zoom out, a box covering the image covers every crop: area 1, always filtered out
    whole = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
    config = data_config(augmentation="tf1", photometric=False, flip_probability=0.0,
                         expansion_probability=0.0)
    plain = augment.augment_for_training(encoded, whole, [1], [False], tf.constant([0, 0]),
                                         data_config(augmentation="none"), 40)
    for i in range(5):
        out = augment.augment_for_training(encoded, whole, [1], [False],
                                           tf.constant([8, i], tf.int64), config, 40)
        np.testing.assert_allclose(out["boxes"].numpy(), whole)
        np.testing.assert_allclose(out["image"].numpy(), plain["image"].numpy(), atol=1e-3)


def test_same_seed_same_result_other_seed_other_result(sample_image):
    encoded, _ = sample_image
    config = data_config()
    run = lambda seed: augment.augment_for_training(encoded, BOXES, [1, 2, 3], [False] * 3,
                                                    tf.constant(seed, tf.int64), config, 32)
    a, b, c = run([1, 2]), run([1, 2]), run([1, 3])
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    np.testing.assert_array_equal(a["boxes"].numpy(), b["boxes"].numpy())
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())


def test_none_mode_is_resize_bgr_minus_mean(sample_image):
    encoded, pixels = sample_image
    out = augment.augment_for_training(encoded, BOXES, [1, 2, 3], [False] * 3,
                                       tf.constant([0, 0]), data_config(augmentation="none"), 36)
    decoded = tf.io.decode_jpeg(encoded, channels=3)
    expected = (tf.image.resize(tf.cast(decoded, tf.float32), [36, 36]).numpy() - MEAN)[..., ::-1]
    np.testing.assert_allclose(out["image"].numpy(), expected, atol=1e-3)
    np.testing.assert_array_equal(out["boxes"].numpy(), BOXES)
    assert out["image_size"].numpy().tolist() == [72, 96]
