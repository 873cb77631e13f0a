"""SavedModel export: reloaded signatures give the in-process detections, in original pixels."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd.anchors import generate_anchors
from ssd.config import load_config
from ssd.preprocessing import preprocess_image
from ssd.detector import build_inference_model
from ssd.export import CLASS_NAMES_ASSET, export_saved_model
from ssd.postprocess import postprocess

CLASS_NAMES = ["circle", "square", "triangle"]


def _config():
    return load_config("ssd300_voc0712", {"model.width_multiplier": 0.125, "model.num_classes": 4,
                                          "data.class_names": CLASS_NAMES})


def _reference(model, config, rgb_images):
    """Detections computed in-process from PIL-decoded RGB arrays, one image at a time."""
    anchors = tf.constant(generate_anchors(config), tf.float32)
    results = []
    for image in rgb_images:
        inputs = preprocess_image(tf.constant(image), config)[tf.newaxis]
        cls_logits, box_encodings = model(inputs, training=False)
        out = {k: v[0].numpy() for k, v in postprocess(cls_logits, box_encodings, anchors, config).items()}
        results.append(out)
    return results


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tf.keras.utils.set_random_seed(3)
    config = _config()
    model = build_inference_model(config)
    export_dir = str(tmp_path_factory.mktemp("export") / "saved_model")
    assert export_saved_model(model, config, export_dir) == export_dir
    return config, model, export_dir, tf.saved_model.load(export_dir)


def _check_detections(out, index, reference, height, width):
    n = int(out["num_detections"][index])
    assert n == reference["num_detections"] and n > 0
    np.testing.assert_allclose(out["scores"][index].numpy(), reference["scores"], atol=1e-5)
    np.testing.assert_array_equal(out["classes"][index].numpy(), reference["classes"])
    np.testing.assert_allclose(out["boxes"][index].numpy(), reference["boxes"], atol=1e-5)
    # continuous pixel edges of the original image: normalized * (H, W, H, W)
    expected_pixels = reference["boxes"] * np.array([height, width, height, width], np.float32)
    np.testing.assert_allclose(out["pixel_boxes"][index].numpy(), expected_pixels, atol=1e-3)
    assert out["pixel_boxes"][index].numpy()[:n, 2].max() <= height + 1e-3
    assert out["pixel_boxes"][index].numpy()[:n, 3].max() <= width + 1e-3
    names = [s.decode() for s in out["class_names"][index].numpy()]
    assert names[:n] == [CLASS_NAMES[c - 1] for c in reference["classes"][:n]]
    assert all(name == "" for name in names[n:])
    np.testing.assert_array_equal(out["original_shape"][index].numpy(), [height, width])


def test_encoded_signature_matches_in_process_detections(exported):
    config, model, _, loaded = exported
    rng = np.random.default_rng(0)
    color = rng.integers(0, 256, size=(57, 83, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(91, 40), dtype=np.uint8)  # decoded to RGB by repetition
    out = loaded.signatures["serving_default"](images=tf.constant([_png(color), _png(gray)]))
    rgb_gray = np.repeat(gray[..., np.newaxis], 3, axis=-1)
    reference = _reference(model, config, [color, rgb_gray])
    _check_detections(out, 0, reference[0], 57, 83)
    _check_detections(out, 1, reference[1], 91, 40)
    assert out["scores"].shape == (2, config.eval.max_detections)


def test_uint8_signature_matches_in_process_detections(exported):
    config, model, _, loaded = exported
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2, 64, 48, 3), dtype=np.uint8)
    out = loaded.signatures["serving_images"](images=tf.constant(images))
    reference = _reference(model, config, list(images))
    for i in range(2):
        _check_detections(out, i, reference[i], 64, 48)


def test_class_names_travel_as_signature_and_asset(exported, tmp_path):
    _, _, export_dir, loaded = exported
    names = loaded.signatures["class_names"]()["class_names"].numpy()
    assert [n.decode() for n in names] == CLASS_NAMES
    asset = tf.io.read_file(f"{export_dir}/assets/{CLASS_NAMES_ASSET}").numpy().decode()
    assert asset.split() == CLASS_NAMES


def test_existing_export_dir_is_refused(exported, tmp_path):
    config, model, _, _ = exported
    target = tmp_path / "taken"
    target.mkdir()
    (target / "something").write_text("x")
    with pytest.raises(FileExistsError, match="taken"):
        export_saved_model(model, config, str(target))
    assert (target / "something").exists()
