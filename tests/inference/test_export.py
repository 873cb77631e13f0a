"""SavedModel export: reloaded signatures give the in-process detections, in original pixels,
under the Object Detection API's output names, with a score threshold input and its default."""

import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd.modeling.anchors import generate_anchors
from ssd.config.loading import load_config
from ssd.data.preprocessing import preprocess_image
from ssd.inference.detector import build_inference_model
from ssd.inference.saved_model import CLASS_NAMES_ASSET, export_saved_model
from tensorflow.core.protobuf import saved_model_pb2
from ssd.modeling.postprocess import postprocess

CLASS_NAMES = ["circle", "square", "triangle"]
OUTPUT_NAMES = {"detection_boxes", "detection_scores", "detection_classes", "num_detections",
                "detection_pixel_boxes", "detection_class_names", "original_shape"}


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


PROBE = np.random.default_rng(3).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)


def _threshold_between(scores):
    """A threshold keeping some detections and dropping others."""
    scores = np.sort(scores[scores > 0])[::-1]
    assert len(scores) >= 4 and scores[0] > scores[-1]
    return float((scores[len(scores) // 2] + scores[len(scores) // 2 - 1]) / 2)


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
    # a default threshold that keeps some of the probe image's detections and drops others
    (reference,) = _reference(model, config, [PROBE])
    default = _threshold_between(reference["scores"])
    assert export_saved_model(model, config, export_dir, score_threshold=default) == export_dir
    return config, model, export_dir, tf.saved_model.load(export_dir), default


def _check_detections(out, index, reference, height, width, threshold=0.0):
    """The signature's row `index` against the in-process detections kept at `threshold`."""
    assert set(out) == OUTPUT_NAMES
    for name in ("detection_boxes", "detection_scores", "detection_classes", "num_detections",
                 "detection_pixel_boxes"):
        assert out[name].dtype == tf.float32, name
    k = len(reference["scores"])
    kept = int(np.count_nonzero(reference["scores"][:reference["num_detections"]] >= threshold))
    n = int(out["num_detections"][index])
    assert n == kept and float(out["num_detections"][index]) == kept
    np.testing.assert_allclose(out["detection_scores"][index].numpy()[:n], reference["scores"][:n], atol=1e-5)
    np.testing.assert_array_equal(out["detection_classes"][index].numpy()[:n], reference["classes"][:n])
    np.testing.assert_allclose(out["detection_boxes"][index].numpy()[:n], reference["boxes"][:n], atol=1e-5)
    # continuous pixel edges of the original image: normalized * (H, W, H, W)
    expected_pixels = reference["boxes"][:n] * np.array([height, width, height, width], np.float32)
    pixels = out["detection_pixel_boxes"][index].numpy()
    np.testing.assert_allclose(pixels[:n], expected_pixels, atol=1e-3)
    if n:
        assert pixels[:n, 2].max() <= height + 1e-3
        assert pixels[:n, 3].max() <= width + 1e-3
    names = [s.decode() for s in out["detection_class_names"][index].numpy()]
    assert names[:n] == [CLASS_NAMES[int(c) - 1] for c in reference["classes"][:n]]
    # rows below the threshold are padding
    assert len(names) == k and all(name == "" for name in names[n:])
    assert not np.any(out["detection_scores"][index].numpy()[n:])
    assert not np.any(out["detection_classes"][index].numpy()[n:])
    assert not np.any(out["detection_boxes"][index].numpy()[n:])
    assert not np.any(pixels[n:])
    np.testing.assert_array_equal(out["original_shape"][index].numpy(), [height, width])
    return n


def test_encoded_signature_matches_in_process_detections(exported):
    config, model, _, loaded, _ = exported
    rng = np.random.default_rng(0)
    color = rng.integers(0, 256, size=(57, 83, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(91, 40), dtype=np.uint8)  # decoded to RGB by repetition
    out = loaded.signatures["serving_default"](images=tf.constant([_png(color), _png(gray)]),
                                               score_threshold=tf.constant(0.0))
    rgb_gray = np.repeat(gray[..., np.newaxis], 3, axis=-1)
    reference = _reference(model, config, [color, rgb_gray])
    assert _check_detections(out, 0, reference[0], 57, 83) == reference[0]["num_detections"] > 0
    assert _check_detections(out, 1, reference[1], 91, 40) == reference[1]["num_detections"] > 0
    assert out["detection_scores"].shape == (2, config.eval.max_detections)


def test_uint8_signature_matches_in_process_detections(exported):
    config, model, _, loaded, _ = exported
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2, 64, 48, 3), dtype=np.uint8)
    out = loaded.signatures["serving_images"](images=tf.constant(images), score_threshold=tf.constant(0.0))
    reference = _reference(model, config, list(images))
    for i in range(2):
        assert _check_detections(out, i, reference[i], 64, 48) == reference[i]["num_detections"] > 0


@pytest.mark.parametrize("signature", ["serving_default", "serving_images"])
def test_score_threshold_input_pads_the_rows_below_it(exported, signature):
    config, model, _, loaded, _ = exported
    image = np.random.default_rng(2).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    inputs = tf.constant([_png(image)]) if signature == "serving_default" else tf.constant(image[np.newaxis])
    (reference,) = _reference(model, config, [image])
    threshold = _threshold_between(reference["scores"])
    out = loaded.signatures[signature](images=inputs, score_threshold=tf.constant(threshold))
    n = _check_detections(out, 0, reference, 50, 70, threshold)
    assert 0 < n < reference["num_detections"]
    assert out["detection_scores"][0, n - 1] >= threshold > reference["scores"][n]


@pytest.mark.parametrize("signature", ["serving_default", "serving_images"])
def test_score_threshold_default_is_recorded_and_used(exported, signature):
    config, model, export_dir, loaded, default = exported
    # the SignatureDef holds the default (what clients running the graph themselves use)
    saved = saved_model_pb2.SavedModel.FromString(tf.io.read_file(f"{export_dir}/saved_model.pb").numpy())
    signature_def = saved.meta_graphs[0].signature_def[signature]
    assert set(signature_def.inputs) == {"images", "score_threshold"}
    assert set(signature_def.outputs) == OUTPUT_NAMES
    assert float(tf.make_ndarray(signature_def.defaults["score_threshold"])) == np.float32(default)
    # the restored methods take it when left out; the TF2 signature function needs every input
    image = PROBE
    (reference,) = _reference(model, config, [image])
    assert 0 < np.count_nonzero(reference["scores"] >= default) < reference["num_detections"]
    if signature == "serving_default":
        inputs, method = tf.constant([_png(image)]), loaded.serve_encoded
    else:
        inputs, method = tf.constant(image[np.newaxis]), loaded.serve_images
    _check_detections(method(inputs), 0, reference, 40, 60, np.float32(default))
    with pytest.raises(TypeError, match="score_threshold"):
        loaded.signatures[signature](images=inputs)


def test_class_names_travel_as_signature_and_asset(exported, tmp_path):
    _, _, export_dir, loaded, _ = exported
    names = loaded.signatures["class_names"]()["class_names"].numpy()
    assert [n.decode() for n in names] == CLASS_NAMES
    asset = tf.io.read_file(f"{export_dir}/assets/{CLASS_NAMES_ASSET}").numpy().decode()
    assert asset.split() == CLASS_NAMES


def test_existing_export_dir_is_refused(exported, tmp_path):
    config, model, _, _, _ = exported
    target = tmp_path / "taken"
    target.mkdir()
    (target / "something").write_text("x")
    with pytest.raises(FileExistsError, match="taken"):
        export_saved_model(model, config, str(target))
    assert (target / "something").exists()


def test_score_threshold_outside_zero_one_is_refused(exported, tmp_path):
    config, model, _, _, _ = exported
    with pytest.raises(ValueError, match="score_threshold"):
        export_saved_model(model, config, str(tmp_path / "out"), score_threshold=1.5)
    assert not (tmp_path / "out").exists()



@pytest.mark.parametrize("signature", ["serving_default", "serving_images"])
def test_the_graph_feeds_the_default_when_score_threshold_is_left_out(exported, signature):
    """The signature's score_threshold input is a placeholder with the default as its value."""
    _, _, export_dir, _, default = exported
    saved = saved_model_pb2.SavedModel.FromString(tf.io.read_file(f"{export_dir}/saved_model.pb").numpy())
    meta_graph = saved.meta_graphs[0]
    node_name = meta_graph.signature_def[signature].inputs["score_threshold"].name.split(":")[0]
    (node,) = [node for node in meta_graph.graph_def.node if node.name == node_name]
    assert node.op == "PlaceholderWithDefault"
    (source,) = [n for n in meta_graph.graph_def.node if n.name == node.input[0]]
    assert float(tf.make_ndarray(source.attr["value"].tensor)) == np.float32(default)


def test_sigmoid_scores_travel_through_the_saved_model(tmp_path):
    """With loss.classification "sigmoid" the served scores are the logits' sigmoids (the best
    one is the largest object-class sigmoid), not a softmax's."""
    tf.keras.utils.set_random_seed(3)
    config = load_config("ssd300_voc0712", {"model.width_multiplier": 0.125, "model.num_classes": 4,
                                            "data.class_names": CLASS_NAMES,
                                            "loss.classification": "sigmoid"})
    model = build_inference_model(config)
    inputs = preprocess_image(tf.constant(PROBE), config)[tf.newaxis]
    # the class heads (zero biases) scaled to logits of std 2: spread-out, unsaturated scores
    scale = 2.0 / float(tf.math.reduce_std(model(inputs, training=False)[0]))
    for layer in model.layers:
        if layer.name.startswith("cls_") and hasattr(layer, "kernel"):
            layer.kernel.assign(layer.kernel * scale)
    export_dir = export_saved_model(model, config, str(tmp_path / "saved_model"), score_threshold=0.0)
    serve = tf.saved_model.load(export_dir).signatures["serving_images"]
    out = serve(images=tf.constant(PROBE[np.newaxis]), score_threshold=tf.constant(0.0))
    logits, _ = model(inputs, training=False)
    assert 1.5 < float(tf.math.reduce_std(logits)) < 2.5
    best_sigmoid = float(tf.reduce_max(tf.sigmoid(logits[..., 1:])))
    np.testing.assert_allclose(float(out["detection_scores"][0, 0]), best_sigmoid, rtol=1e-5)
    (reference,) = _reference(model, config, [PROBE])
    assert int(out["num_detections"][0]) == reference["num_detections"] > 0
    np.testing.assert_allclose(out["detection_scores"][0].numpy(), reference["scores"], atol=1e-5)
    softmax = dataclasses.replace(config, loss=dataclasses.replace(config.loss, classification="softmax"))
    (softmax_reference,) = _reference(model, softmax, [PROBE])
    assert np.abs(out["detection_scores"][0].numpy() - softmax_reference["scores"]).max() > 0.05
