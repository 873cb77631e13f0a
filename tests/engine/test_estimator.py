"""The Estimator: training with a toy linear model, checked against a numpy SGD-momentum reference;
evaluation, prediction and export of a tiny SSD through the one inference path."""

import glob
import io
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd.engine.estimator import Estimator, EstimatorSpec, ModelFunction, NonFiniteLossError, RunConfig
from ssd.modes import ModeKeys
from tests.detection_matching import assert_same_detections, detections_of

pytestmark = pytest.mark.slow  # trains a model or starts processes


DIM = 3
BATCH = 4
NUM_BATCHES = 6
LR = 0.05
MOMENTUM = 0.9


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_BATCHES * BATCH, DIM)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3).astype(np.float32)[:, None]
    return x, y


def _input_fn(input_context=None):
    x, y = _data()
    return tf.data.Dataset.from_tensor_slices(({"x": x}, {"y": y})).batch(BATCH)


class _LinearModelFn(ModelFunction):
    def __init__(self, model_config, context):
        self.model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(1, kernel_initializer="zeros")])
        self.optimizer = keras.optimizers.SGD(model_config["lr"], momentum=MOMENTUM)
        self._network = context.compile(self.model)

    def __call__(self, features, labels):
        prediction = self._network(features["x"], training=True)
        squared_error = tf.reduce_sum(tf.square(prediction - labels["y"]), axis=1)
        replica = tf.distribute.get_replica_context()
        count = replica.all_reduce("sum", tf.cast(tf.shape(squared_error)[0], tf.float32))
        loss = tf.reduce_sum(squared_error) / count
        return EstimatorSpec(loss=loss, scalars={"mse": loss})


def _reference(step_batches):
    """Keras SGD with momentum on mean squared error, in numpy: v = m v - lr g; w += v."""
    x, y = _data()
    w, b = np.zeros((DIM, 1)), np.zeros(1)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for i in step_batches:
        xb, yb = x[i * BATCH:(i + 1) * BATCH].astype(np.float64), y[i * BATCH:(i + 1) * BATCH]
        residual = xb @ w + b - yb
        gw, gb = 2 * xb.T @ residual / BATCH, 2 * residual.sum(0) / BATCH
        vw, vb = MOMENTUM * vw - LR * gw, MOMENTUM * vb - LR * gb
        w, b = w + vw, b + vb
    return w, b


def _summary_tags(directory):
    tags = {}
    for path in glob.glob(str(directory / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, set()).add(event.step)
    return tags


def _estimator(model_dir, lr=LR, **overrides):
    settings = dict(save_checkpoints_steps=2, keep_checkpoint_max=10, save_summary_steps=2,
                    log_step_count_steps=2)
    settings.update(overrides)
    config = RunConfig(model_dir=str(model_dir), **settings)
    return Estimator(_LinearModelFn, {"lr": lr}, config)


def _weights(estimator):
    kernel, bias = estimator.model.get_weights()
    return kernel, bias


def _checkpoint_weights(path):
    """The linear model's kernel and bias as saved in a checkpoint."""
    model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(1)])
    tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    return model.get_weights()


def assert_no_non_finite_checkpoint(model_dir):
    for index in glob.glob(str(model_dir / "ckpt-*.index")):
        reader = tf.train.load_checkpoint(index[: -len(".index")])
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), name


def test_train_checkpoints_resume(tmp_path):
    estimator = _estimator(tmp_path)
    seen = []
    estimator.train(_input_fn, max_steps=6, hooks=[lambda step, scalars: seen.append((step, scalars))])
    assert estimator.global_step == 6
    assert [step for step, _ in seen] == [1, 2, 3, 4, 5, 6]
    x, y = _data()
    np.testing.assert_allclose(float(seen[0][1]["loss"]), np.mean(y[:BATCH] ** 2), rtol=1e-5)  # zero init
    assert float(seen[0][1]["learning_rate"]) == pytest.approx(LR)
    steps = sorted(int(p.split("-")[-1].split(".")[0]) for p in glob.glob(str(tmp_path / "ckpt-*.index")))
    assert steps == [2, 4, 6]
    w, b = _reference(range(6))
    kernel, bias = _weights(estimator)
    np.testing.assert_allclose(kernel, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, b, rtol=1e-4, atol=1e-5)
    tags = _summary_tags(tmp_path)
    assert {2, 4, 6} <= tags["loss"] and {2, 4, 6} <= tags["learning_rate"]
    assert {2, 4, 6} <= tags["global_step/sec"]

    # A new Estimator resumes: step, weights and momentum restored; the input restarts.
    resumed = _estimator(tmp_path)
    resumed.train(_input_fn, max_steps=9)
    assert resumed.global_step == 9
    w, b = _reference([0, 1, 2, 3, 4, 5, 0, 1, 2])
    kernel, bias = _weights(resumed)
    np.testing.assert_allclose(kernel, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, b, rtol=1e-4, atol=1e-5)

    # Training to a step already reached does nothing.
    resumed.train(_input_fn, max_steps=9)
    assert resumed.global_step == 9

    # The checkpoint of step 4 holds the weights after four updates.
    w4, b4 = _reference(range(4))
    kernel, bias = _checkpoint_weights(str(tmp_path / "ckpt-4"))
    np.testing.assert_allclose(kernel, w4, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, b4, rtol=1e-4, atol=1e-5)


def test_input_exhaustion_stops_and_saves(tmp_path):
    estimator = _estimator(tmp_path, save_checkpoints_steps=None)
    estimator.train(_input_fn, max_steps=100)
    assert estimator.global_step == NUM_BATCHES
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{NUM_BATCHES}")


def test_non_finite_loss_stops_before_the_update_and_is_never_saved(tmp_path):
    def input_fn(input_context=None):
        x, y = _data()
        x[3 * BATCH] = np.nan  # batch index 3 -> the 4th step
        return tf.data.Dataset.from_tensor_slices(({"x": x}, {"y": y})).batch(BATCH)

    estimator = _estimator(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"at step 4 .*loss=nan") as error:
        estimator.train(input_fn, max_steps=6)
    assert error.value.step == 4
    assert estimator.global_step == 3
    assert np.all(np.isfinite(estimator.model.get_weights()[0]))
    assert_no_non_finite_checkpoint(tmp_path)


def test_exploding_learning_rate_is_reported_with_its_step(tmp_path):
    estimator = _estimator(tmp_path, lr=1e30)
    with pytest.raises(NonFiniteLossError, match="loss is not finite at step"):
        estimator.train(_input_fn, max_steps=6)
    latest = tf.train.latest_checkpoint(str(tmp_path))
    if latest:
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), name


def test_run_config_checks_mixed_precision(tmp_path):
    with pytest.raises(ValueError, match="mixed_precision"):
        RunConfig(model_dir=str(tmp_path), mixed_precision="fp8")


def test_checkpoints_by_seconds_and_kept_count_with_xla(tmp_path):
    estimator = _estimator(tmp_path, save_checkpoints_steps=None, save_checkpoints_secs=1e-9,
                           keep_checkpoint_max=2, jit_compile=True)
    estimator.train(_input_fn, max_steps=5)
    indexes = sorted(p.name for p in tmp_path.glob("ckpt-*.index"))
    assert indexes == ["ckpt-4.index", "ckpt-5.index"]  # one per step, the last two kept
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-5")
    w, b = _reference(range(5))
    np.testing.assert_allclose(estimator.model.get_weights()[0], w, rtol=1e-4, atol=1e-5)


# --- a tiny SSD: evaluation, prediction and export go through the Detector -------------------

CLASS_NAMES = ["circle", "square", "triangle"]
SSD_IMAGES = 6


def _ssd_config(**overrides):
    from ssd.config.loading import load_config
    values = {"model.width_multiplier": 0.125, "model.num_classes": 4, "data.class_names": CLASS_NAMES,
              "data.shuffle_buffer": 8, "data.seed": 1, "train.batch_size": 2, "train.max_steps": 3,
              "train.learning_rate": 1e-4, "train.lr_boundaries": [], "train.lr_factors": [1.0],
              "eval.batch_size": 4,
              # a learning rate that keeps three steps from random weights finite (0.01 sent the
              # logits to 1e21 and then NaN); their class scores stay near-uniform, and with a
              # threshold of 0 every box is a candidate, so there is always something to
              # evaluate, predict and export, on every CPU
              "eval.score_threshold": 0.0}
    values.update(overrides)
    return load_config("ssd300_voc0712", values)


def _write_shape_records(path):
    """Small JPEGs, each with one or two bright rectangles of known class on a dark background."""
    import io

    from PIL import Image

    from ssd.data.records import make_example
    rng = np.random.default_rng(4)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for index in range(SSD_IMAGES):
            height, width = int(rng.integers(40, 80)), int(rng.integers(40, 80))
            pixels = rng.integers(0, 50, size=(height, width, 3), dtype=np.uint8)
            boxes, labels = [], []
            for _ in range(1 + index % 2):
                y0, x0 = rng.uniform(0, 0.5, size=2)
                y1, x1 = y0 + rng.uniform(0.3, 0.5), x0 + rng.uniform(0.3, 0.5)
                label = 1 + len(labels) + index % 2  # every class has ground truth
                pixels[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = 80 * label
                boxes.append([y0, x0, y1, x1])
                labels.append(label)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
            writer.write(make_example(
                encoded=buffer.getvalue(), image_format="jpeg", height=height, width=width,
                filename=f"{index}.jpg", source_id=f"{index:02d}", boxes=boxes, labels=labels,
                texts=[CLASS_NAMES[l - 1] for l in labels], difficult=[0] * len(labels),
                truncated=[0] * len(labels)).SerializeToString())


def _event_tensors(directory):
    """{(tag, step): numpy value} of every TensorBoard summary in `directory`'s event files."""
    tensors = {}
    for path in sorted(glob.glob(os.path.join(str(directory), "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensors[(value.tag, event.step)] = tf.make_ndarray(value.tensor)
    return tensors


def _event_scalars(directory):
    """{(tag, step): value} of the TensorBoard scalars (rank 0) in `directory`'s event files."""
    return {key: float(value) for key, value in _event_tensors(directory).items() if value.ndim == 0}


@pytest.fixture(scope="module")
def ssd_run(tmp_path_factory):
    """Three training steps with an evaluation every two (at steps 2 and 3), progress logged."""
    from absl import logging

    from ssd.data.input_fn import make_input_fn
    from ssd.engine.model_fn import SSDModelFn
    root = tmp_path_factory.mktemp("ssd")
    data = root / "shapes-00000-of-00001"
    _write_shape_records(data)
    config = _ssd_config()
    model_dir = root / "model"
    run_config = RunConfig(model_dir=str(model_dir), save_checkpoints_steps=None, save_summary_steps=1,
                           log_step_count_steps=1, tf_random_seed=2)
    estimator = Estimator(SSDModelFn, model_config=config, run_config=run_config)
    logged = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logging, "info", lambda fmt, *args: logged.append(fmt % args))
        metrics = estimator.train_and_evaluate(make_input_fn(str(data), config, ModeKeys.TRAIN),
                                               make_input_fn(str(data), config, ModeKeys.EVAL),
                                               max_steps=3, eval_every_steps=2)
    return {"root": root, "data": str(data), "config": config, "model_dir": model_dir,
            "estimator": estimator, "metrics": metrics, "logged": logged}


def test_train_and_evaluate_logs_towards_max_steps_and_evaluates_each_saved_checkpoint(ssd_run):
    # progress and ETA count towards max_steps, not towards the next evaluation
    progress = [line.split(":")[0] for line in ssd_run["logged"] if re.match(r"step \d+/", line)]
    assert progress == ["step 1/3", "step 2/3", "step 3/3"]
    model_dir = ssd_run["model_dir"]
    assert sorted(p.name for p in model_dir.glob("ckpt-*.index")) == ["ckpt-2.index", "ckpt-3.index"]
    metrics = ssd_run["metrics"]
    assert metrics["global_step"] == 3 and metrics["num_images"] == SSD_IMAGES
    assert metrics["checkpoint"] == str(model_dir / "ckpt-3")
    tags = {tag for tag, _ in _event_scalars(model_dir / "eval")}
    assert tags == {"mAP"} | {f"classes/{name}" for name in CLASS_NAMES}
    assert {step for _, step in _event_scalars(model_dir / "eval")} == {2, 3}


def test_evaluation_during_training_equals_eval_py_on_the_same_checkpoints(ssd_run, tmp_path):
    """train_and_evaluate and eval.py's run_evaluation: the same TensorBoard scalars, PR curves,
    pictures and mAP."""
    import shutil

    from ssd.engine.checkpoint_evaluation import run_evaluation
    during_training = _event_scalars(ssd_run["model_dir"] / "eval")
    model_dir = tmp_path / "model"
    shutil.copytree(ssd_run["model_dir"], model_dir, ignore=shutil.ignore_patterns("eval"))
    summaries = {}
    for step in (2, 3):
        (summary,) = run_evaluation(ssd_run["config"], str(model_dir), ssd_run["data"],
                                    checkpoint_path=str(model_dir / f"ckpt-{step}"),
                                    output_dir=str(tmp_path / f"report_{step}"), print_table=None,
                                    progress_stream=io.StringIO())
        summaries[step] = summary
    by_eval_py = _event_scalars(model_dir / "eval")
    assert set(by_eval_py) == set(during_training) and len(by_eval_py) == 2 * (1 + len(CLASS_NAMES))
    for key, value in by_eval_py.items():
        assert during_training[key] == value, key
    metrics = ssd_run["metrics"]
    assert metrics["mAP"] == summaries[3]["mAP"] and metrics["classes"] == summaries[3]["classes"]
    assert during_training[("mAP", 2)] == pytest.approx(summaries[2]["mAP"])
    # the numbers are those of the checkpoints: the report's APs are their TensorBoard scalars
    for name in CLASS_NAMES:
        assert during_training[(f"classes/{name}", 3)] == pytest.approx(summaries[3]["classes"][name])
    # the curves and the pictures of the first images: the same tags, values and pixels
    from ssd.engine.evaluation_pictures import EVAL_IMAGES
    from ssd.engine.evaluation_reports import IMAGES_TAG
    all_during_training = _event_tensors(ssd_run["model_dir"] / "eval")
    all_by_eval_py = _event_tensors(model_dir / "eval")
    assert set(all_by_eval_py) == set(all_during_training)
    curves = {tag for tag, _ in all_by_eval_py if tag.startswith("precision_recall/")}
    assert curves and curves <= {f"precision_recall/{name}" for name in CLASS_NAMES}
    for step in (2, 3):
        assert len(all_by_eval_py[(IMAGES_TAG, step)]) == 2 + min(EVAL_IMAGES, SSD_IMAGES)
    for key, value in all_by_eval_py.items():
        np.testing.assert_array_equal(all_during_training[key], value, err_msg=str(key))


def test_coco_evaluation_during_training_equals_eval_py_on_the_same_checkpoints(ssd_run, tmp_path):
    """With eval.metric=coco on records with a COCO category map: the Estimator's evaluation (the
    one train_and_evaluate runs after each save) and eval.py's run_evaluation write the same
    TensorBoard scalars and pictures and report the same numbers; eval.py's results JSON carries
    the map's category ids and the records' image ids."""
    import json
    import shutil

    from ssd.coco.categories import Category, category_map_path, write_category_map
    from ssd.coco.metric import STAT_KEYS
    from ssd.data.input_fn import make_input_fn
    from ssd.engine.checkpoint_evaluation import run_evaluation
    from ssd.engine.evaluation_reports import IMAGES_TAG
    from ssd.engine.evaluators import DETECTIONS_FILENAME
    from ssd.engine.model_fn import SSDModelFn
    coco_ids = [7, 2, 30]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = data_dir / os.path.basename(ssd_run["data"])
    shutil.copy(ssd_run["data"], data)
    write_category_map(category_map_path(data_dir, "shapes"),
                       [Category(k + 1, c, n) for k, (c, n) in enumerate(zip(coco_ids, CLASS_NAMES))])
    config = _ssd_config(**{"eval.metric": "coco"})
    copies = {}
    for name in ("training", "eval_py"):
        copies[name] = tmp_path / name
        shutil.copytree(ssd_run["model_dir"], copies[name], ignore=shutil.ignore_patterns("eval"))
    estimator = Estimator(SSDModelFn, model_config=config, run_config=RunConfig(model_dir=str(copies["training"])))
    metrics = {step: estimator.evaluate(make_input_fn(str(data), config, ModeKeys.EVAL),
                                        str(copies["training"] / f"ckpt-{step}")) for step in (2, 3)}
    summaries = {}
    for step in (2, 3):
        (summaries[step],) = run_evaluation(config, str(copies["eval_py"]), str(data),
                                            checkpoint_path=str(copies["eval_py"] / f"ckpt-{step}"),
                                            output_dir=str(tmp_path / f"report_{step}"), print_table=None,
                                            progress_stream=io.StringIO())
        for key in STAT_KEYS + ("classes", "classes_AP50", "num_positives", "num_detections"):
            assert metrics[step][key] == summaries[step][key], key
        assert metrics[step]["global_step"] == summaries[step]["step"] == step
    during_training = _event_tensors(copies["training"] / "eval")
    by_eval_py = _event_tensors(copies["eval_py"] / "eval")
    assert set(by_eval_py) == set(during_training)
    scalar_tags = {tag for (tag, _), value in by_eval_py.items() if value.ndim == 0}
    assert scalar_tags == ({f"coco/{key}" for key in STAT_KEYS if summaries[3][key] is not None}
                           | {f"coco_classes/{name}" for name in CLASS_NAMES
                              if summaries[3]["classes"][name] is not None})
    assert "coco/AP" in scalar_tags and {tag for tag, _ in by_eval_py} == scalar_tags | {IMAGES_TAG}
    for key, value in by_eval_py.items():
        np.testing.assert_array_equal(during_training[key], value, err_msg=str(key))
    assert during_training[("coco/AP", 3)] == pytest.approx(summaries[3]["AP"])
    results = json.loads((tmp_path / "report_3" / "coco" / DETECTIONS_FILENAME).read_text())
    assert results and {r["category_id"] for r in results} <= set(coco_ids)
    assert {r["image_id"] for r in results} <= set(range(SSD_IMAGES))  # source ids "00".."05"
    # evaluation during training reads the category map too: one that does not fit is refused
    from ssd.data.record_files import DataError
    write_category_map(category_map_path(data_dir, "shapes"),
                       [Category(k + 1, c, n) for k, (c, n) in enumerate(zip(coco_ids, CLASS_NAMES[::-1]))])
    with pytest.raises(DataError, match="shapes_categories.json.*data.class_names"):
        estimator.evaluate(make_input_fn(str(data), config, ModeKeys.EVAL), str(copies["training"] / "ckpt-3"))


def test_predict_is_the_network_and_postprocessing_of_the_checkpoint(ssd_run):
    from ssd.modeling.anchors import generate_anchors
    from ssd.data.input_fn import make_input_fn
    from ssd.modeling.build import build_model
    from ssd.modeling.postprocess import postprocess
    config, estimator = ssd_run["config"], ssd_run["estimator"]
    checkpoint = str(ssd_run["model_dir"] / "ckpt-2")
    predictions = list(estimator.predict(make_input_fn(ssd_run["data"], config, ModeKeys.PREDICT),
                                         checkpoint_path=checkpoint))
    assert [p["image_id"].decode() for p in predictions] == [f"{i:02d}" for i in range(SSD_IMAGES)]

    # the same computed here: weights of ckpt-2, JPEG decoded, resized, BGR minus the mean
    model = build_model(config)
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
    anchors = tf.constant(generate_anchors(config), tf.float32)
    for record, prediction in zip(tf.data.TFRecordDataset(ssd_run["data"]), predictions):
        example = tf.train.Example.FromString(record.numpy())
        encoded = example.features.feature["image/encoded"].bytes_list.value[0]
        image = tf.io.decode_jpeg(encoded, channels=3)
        height, width = image.shape[:2]
        inputs = tf.image.resize(tf.cast(image, tf.float32), [300, 300])
        inputs = (inputs - tf.constant(config.data.mean_rgb))[..., ::-1][tf.newaxis]
        cls_logits, box_encodings = model(inputs, training=False)
        expected = {k: v[0].numpy() for k, v in postprocess(cls_logits, box_encodings, anchors, config).items()}
        # the two graphs round differently: near-equal scores of the barely trained model may
        # come in either order, and the last kept rows may be the other of a near-tie
        compared = assert_same_detections(
            detections_of(prediction, index=None), detections_of(expected, index=None),
            box_atol=1e-5, score_atol=1e-5, max_detections=config.eval.max_detections,
            names=("predict", "network + postprocess"))
        assert compared > 0
        np.testing.assert_array_equal(prediction["original_shape"], [height, width])
        n = int(prediction["num_detections"])
        np.testing.assert_allclose(prediction["pixel_boxes"][:n],
                                   prediction["boxes"][:n] * [height, width, height, width], atol=1e-3)
        names = [s.decode() for s in prediction["class_names"][:n]]
        assert names == [CLASS_NAMES[c - 1] for c in prediction["classes"][:n]]


def test_export_serves_the_predictions(ssd_run, tmp_path):
    from ssd.data.input_fn import make_input_fn
    config, estimator = ssd_run["config"], ssd_run["estimator"]
    checkpoint = str(ssd_run["model_dir"] / "ckpt-2")
    export_dir = estimator.export_saved_model(str(tmp_path / "export"), checkpoint_path=checkpoint)
    assert os.path.dirname(export_dir) == str(tmp_path / "export")
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    predictions = list(estimator.predict(make_input_fn(ssd_run["data"], config, ModeKeys.PREDICT),
                                         checkpoint_path=checkpoint))
    encoded = [tf.train.Example.FromString(r.numpy()).features.feature["image/encoded"].bytes_list.value[0]
               for r in tf.data.TFRecordDataset(ssd_run["data"])]
    out = serve(images=tf.constant(encoded), score_threshold=tf.constant(0.0))  # every row
    for i, prediction in enumerate(predictions):
        for name in ("boxes", "pixel_boxes", "scores"):
            np.testing.assert_allclose(out[f"detection_{name}"][i].numpy(), prediction[name], atol=1e-4,
                                       err_msg=name)
        np.testing.assert_array_equal(out["detection_classes"][i].numpy(), prediction["classes"])
        np.testing.assert_array_equal(out["original_shape"][i].numpy(), prediction["original_shape"])


def test_evaluate_without_checkpoint_is_an_error(tmp_path):
    from ssd.engine.model_fn import SSDModelFn
    estimator = Estimator(SSDModelFn, _ssd_config(), RunConfig(model_dir=str(tmp_path / "untrained")))
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*untrained"):
        estimator.evaluate(lambda input_context: pytest.fail("the data must not be read"))


def test_training_session_runs_any_step_function_with_the_collaborators_it_is_given(tmp_path):
    from ssd.modeling.checkpoints import Checkpointer
    from ssd.engine.training import Cadence, StepResult, TrainingSession
    weight = tf.Variable(0.0)
    losses = iter([0.5, 0.4, 0.3, float("nan")])

    def step_fn(iterator, count=1):
        loss = next(losses)  # StopIteration once the losses run out: the input is exhausted
        if np.isfinite(loss):
            weight.assign_add(1.0)
        return StepResult({"loss": tf.constant(loss)}, tf.constant(bool(np.isfinite(loss))),
                          tf.constant(2, tf.int64), {})

    saved, seen = [], []
    session = TrainingSession(step_fn, Checkpointer({"w": weight}, str(tmp_path), max_to_keep=5),
                              tf.summary.create_noop_writer(),
                              Cadence(save_checkpoints_steps=2, save_summary_steps=0, log_step_count_steps=0),
                              start_step=0, on_save=saved.append,
                              hooks=[lambda step, scalars: seen.append((step, float(scalars["loss"])))])
    assert session.run(iterator=None, max_steps=3)
    assert saved == [str(tmp_path / "ckpt-2"), str(tmp_path / "ckpt-3")]  # by steps, and at the end
    assert seen == [(1, 0.5), (2, pytest.approx(0.4)), (3, pytest.approx(0.3))]
    with pytest.raises(NonFiniteLossError, match="at step 4") as error:
        session.run(iterator=None, max_steps=6)
    assert error.value.latest_checkpoint == str(tmp_path / "ckpt-3")
    assert session.step == 3 and float(weight.numpy()) == 3.0
    assert not session.run(iterator=None, max_steps=6)  # exhausted: stops, nothing new to save
    assert saved[-1] == str(tmp_path / "ckpt-3")

    weight.assign(float("nan"))
    with pytest.raises(FloatingPointError, match="not finite at step 4"):
        Checkpointer({"w": weight}, str(tmp_path), max_to_keep=5).save(4)
    assert not (tmp_path / "ckpt-4.index").exists()


def test_a_stop_signal_during_a_step_saves_that_step_and_ends_the_session(tmp_path):
    import signal
    from ssd.modeling.checkpoints import Checkpointer
    from ssd.engine.interrupts import LocalStop, StopSignals, TrainingInterrupted
    from ssd.engine.training import Cadence, StepResult, TrainingSession
    weight = tf.Variable(0.0)

    def step_fn(iterator, count=1):
        weight.assign_add(1.0)
        if float(weight.numpy()) == 2.0:
            signal.raise_signal(signal.SIGTERM)  # arrives while the step is in flight
        return StepResult({"loss": tf.constant(0.5)}, tf.constant(True), tf.constant(2, tf.int64), {})

    saved = []
    with StopSignals() as signals:
        session = TrainingSession(step_fn, Checkpointer({"w": weight}, str(tmp_path), max_to_keep=5),
                                  tf.summary.create_noop_writer(),
                                  Cadence(save_checkpoints_steps=100, save_summary_steps=0,
                                          log_step_count_steps=0),
                                  start_step=0, on_save=saved.append, stop=LocalStop(signals))
        with pytest.raises(TrainingInterrupted) as stopped:
            session.run(iterator=None, max_steps=100)
    assert (stopped.value.step, stopped.value.checkpoint) == (2, str(tmp_path / "ckpt-2"))
    assert stopped.value.exit_code == 143 and saved == [str(tmp_path / "ckpt-2")]
    assert float(tf.train.load_checkpoint(str(tmp_path / "ckpt-2")).get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE")) == 2.0


def _counting_session(tmp_path, cadence_steps: int, start_step: int = 0):
    """A session whose step returns loss = 1 / (step number), its summaries in tmp_path/events."""
    from ssd.modeling.checkpoints import Checkpointer
    from ssd.engine.training import Cadence, StepResult, TrainingSession
    weight = tf.Variable(float(start_step))

    def step_fn(iterator, count=1):
        weight.assign_add(1.0)
        return StepResult({"loss": tf.constant(1.0 / float(weight.numpy()))}, tf.constant(True),
                          tf.constant(2, tf.int64), {})

    writer = tf.summary.create_file_writer(str(tmp_path / "events"))
    cadence = Cadence(save_checkpoints_steps=None, save_summary_steps=cadence_steps,
                      log_step_count_steps=cadence_steps)
    return TrainingSession(step_fn, Checkpointer({"w": weight}, str(tmp_path), max_to_keep=5), writer,
                           cadence, start_step=start_step), writer


@pytest.fixture
def logged(monkeypatch):
    """The training loop's INFO lines, as they are formatted."""
    from ssd.engine import training
    lines = []
    monkeypatch.setattr(training.logging, "info", lambda fmt, *args: lines.append(fmt % args))
    return lines


def _step_lines(logged) -> list[str]:
    return [line for line in logged if line.startswith("step ")]


def test_a_run_shorter_than_the_cadence_logs_and_summarizes_its_first_and_last_steps(tmp_path, logged):
    session, writer = _counting_session(tmp_path, cadence_steps=100)
    session.run(iterator=None, max_steps=5)
    writer.close()
    lines = _step_lines(logged)
    assert lines[0].startswith("step 1: tracing the training step's graph")  # said before it runs
    progress = [line for line in lines if "/5:" in line]
    assert [line.split(":")[0] for line in progress] == ["step 1/5", "step 5/5"]
    assert "loss 1 | first step " in progress[0] and "steps/s" not in progress[0]
    assert "loss 0.2 |" in progress[1] and "steps/s" in progress[1] and "ETA 0:00:00" in progress[1]
    tags = _summary_tags(tmp_path / "events")
    assert tags["loss"] == {1, 5}
    assert tags["global_step/sec"] == {5}  # the first step's time is the graph's building

    # a resumed session: its own first step, and the run's last
    logged.clear()
    resumed, writer = _counting_session(tmp_path / "resumed", cadence_steps=100, start_step=5)
    resumed.run(iterator=None, max_steps=8)
    writer.close()
    assert [line.split(":")[0] for line in _step_lines(logged) if "/8:" in line] == ["step 6/8", "step 8/8"]
    assert _summary_tags(tmp_path / "resumed" / "events")["loss"] == {6, 8}


def test_a_cadence_of_0_still_logs_and_summarizes_nothing(tmp_path, logged):
    session, writer = _counting_session(tmp_path, cadence_steps=0)
    session.run(iterator=None, max_steps=3)
    writer.close()
    assert not [line for line in _step_lines(logged) if "/3:" in line]
    assert "loss" not in _summary_tags(tmp_path / "events")
