import io

import numpy as np
import tensorflow as tf
from PIL import Image

from ssd.config.loading import load_config
from ssd.data.preprocessing import (decode_image, from_bgr_minus_mean, preprocess_image, subtract_mean,
                               to_display)

MEAN = np.array([123.68, 116.78, 103.94], np.float32)


def tiny_config():
    return load_config("ssd300_voc0712", {"model.num_classes": 4,
                                          "data.class_names": ["a", "b", "c"]})


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_decode_image_jpeg_and_png_to_three_channels():
    rgba = np.random.default_rng(0).integers(0, 256, (9, 7, 4), dtype=np.uint8)
    for mode, pixels in [("RGBA", rgba), ("L", rgba[..., 0]), ("RGB", rgba[..., :3])]:
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode).save(buffer, "PNG")
        image = decode_image(tf.constant(buffer.getvalue())).numpy()
        assert image.shape == (9, 7, 3) and image.dtype == np.uint8
        expected = np.asarray(Image.fromarray(pixels, mode).convert("RGB"))
        np.testing.assert_array_equal(image, expected)
    assert decode_image(tf.constant(jpeg(rgba[..., :3]))).shape == (9, 7, 3)


def test_preprocess_image_single_and_batched():
    config = tiny_config()
    image = np.zeros((2, 40, 50, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 100, 50
    expected = np.array([50, 100, 200], np.float32) - MEAN[::-1]
    batched = preprocess_image(image, config).numpy()
    assert batched.shape == (2, 300, 300, 3)
    np.testing.assert_allclose(batched, np.broadcast_to(expected, batched.shape), atol=1e-4)
    np.testing.assert_allclose(preprocess_image(image[0], config).numpy(), batched[0], atol=1e-4)


def test_subtract_mean_per_channel_any_rank():
    rng = np.random.default_rng(1)
    for shape in [(5, 7, 3), (2, 4, 6, 3)]:
        image = rng.uniform(0, 255, shape).astype(np.float32)
        np.testing.assert_allclose(subtract_mean(tf.constant(image), MEAN).numpy(),
                                   image - MEAN, atol=1e-4)


def test_to_display_inverts_preprocessing_and_clips():
    config = tiny_config()
    rng = np.random.default_rng(2)
    # a picture already at the input size: the resize is the identity, the round trip exact
    pixels = rng.integers(0, 256, (2, 300, 300, 3)).astype(np.uint8)
    shown = to_display(preprocess_image(pixels, config), config).numpy()
    assert shown.dtype == np.float32
    np.testing.assert_allclose(shown, pixels / 255.0, atol=1e-5)
    # out-of-range model inputs (e.g. after photometric distortion) are clipped to [0, 1]
    bgr = np.array([[[-200.0, 0.0, 300.0]]], np.float32)  # B, G, R minus the mean
    expected = np.clip(np.array([300.0 + MEAN[0], 0.0 + MEAN[1], -200.0 + MEAN[2]]) / 255, 0, 1)
    np.testing.assert_allclose(to_display(bgr, config).numpy()[0, 0], expected, atol=1e-6)


# --- the MobileNetV2 convention: RGB scaled to [-1, 1] -----------------------------------------

def ssdlite_config():
    return load_config("ssdlite320_shapes_cpu")


def test_tf_rgb_unit_is_rgb_over_127_5_minus_1():
    config = ssdlite_config()
    image = np.zeros((2, 40, 50, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 100, 0
    expected = np.array([1.0, 100 / 127.5 - 1, -1.0], np.float32)  # RGB order kept
    batched = preprocess_image(image, config).numpy()
    assert batched.shape == (2, 320, 320, 3)
    np.testing.assert_allclose(batched, np.broadcast_to(expected, batched.shape), atol=1e-6)
    np.testing.assert_allclose(preprocess_image(image[0], config).numpy(), batched[0], atol=1e-6)


def test_to_display_inverts_tf_rgb_unit():
    config = ssdlite_config()
    pixels = np.random.default_rng(3).integers(0, 256, (2, 320, 320, 3)).astype(np.uint8)
    shown = to_display(preprocess_image(pixels, config), config).numpy()
    np.testing.assert_allclose(shown * 255.0, pixels, atol=1e-3)
    clipped = to_display(tf.constant([[[[-1.5, 0.0, 1.5]]]]), config).numpy()
    np.testing.assert_allclose(clipped.reshape(3), [0.0, 0.5, 1.0], atol=1e-6)


def test_from_bgr_minus_mean_converts_between_the_conventions():
    vgg, lite = tiny_config(), ssdlite_config()
    pixels = np.random.default_rng(4).integers(0, 256, (1, 37, 41, 3)).astype(np.uint8)
    caffe = subtract_mean(tf.cast(pixels, tf.float32), MEAN)[..., ::-1]  # BGR minus the mean
    np.testing.assert_array_equal(from_bgr_minus_mean(caffe, vgg.data).numpy(), caffe.numpy())
    np.testing.assert_allclose(from_bgr_minus_mean(caffe, lite.data).numpy(),
                               pixels / 127.5 - 1.0, atol=1e-5)
    # the mean colour (zero in caffe_bgr_mean) stays the mean colour
    canvas = from_bgr_minus_mean(tf.zeros([2, 2, 3]), lite.data).numpy()
    np.testing.assert_allclose(canvas, np.broadcast_to(MEAN / 127.5 - 1.0, (2, 2, 3)), atol=1e-6)


def test_training_augmentation_gives_the_ssdlite_convention_and_a_mean_canvas():
    import dataclasses

    from ssd.data.augment import recipe as augment

    data = dataclasses.replace(ssdlite_config().data, expansion_probability=1.0,
                               crop_min_scale=1.0, photometric=False, flip_probability=0.0,
                               random_interpolation=False)
    grey = 90.0
    encoded = tf.constant(jpeg(np.full((40, 60, 3), int(grey), np.uint8)))
    box = np.array([[0.2, 0.2, 0.8, 0.8]], np.float32)
    plain = augment.augment_for_training(encoded, box, [1], [False], tf.constant([0, 0]),
                                         dataclasses.replace(data, augmentation="none"), 32)
    expected = tf.image.resize(tf.cast(tf.io.decode_jpeg(encoded), tf.float32), [32, 32])
    np.testing.assert_allclose(plain["image"].numpy(), expected.numpy() / 127.5 - 1.0, atol=1e-5)

    canvas = MEAN / 127.5 - 1.0
    seen_canvas = 0
    for i in range(6):
        image = augment.augment_for_training(encoded, box, [1], [False], tf.constant([7, i]),
                                             data, 32)["image"].numpy()
        # every pixel lies between the image's grey and the mean colour, channel by channel
        low = np.minimum(canvas, grey / 127.5 - 1.0) - 0.02
        high = np.maximum(canvas, grey / 127.5 - 1.0) + 0.02
        assert np.all((image >= low) & (image <= high))
        seen_canvas += int(np.all(np.abs(image[0, 0] - canvas) < 1e-5)
                           or np.all(np.abs(image[-1, -1] - canvas) < 1e-5))
    assert seen_canvas >= 4  # the zoom-out canvas shows in a corner in (nearly) every draw
