import io

import numpy as np
import tensorflow as tf
from PIL import Image

from ssd.config import load_config
from ssd.preprocessing import decode_image, preprocess_image, subtract_mean, to_display

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
