"""train.py end to end on tiny synthetic TFRecords, and the SSD model function's training modes."""

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd.config.loading import load_config, save_config
from ssd.data.records import make_example

pytestmark = pytest.mark.slow  # trains a model or starts processes


ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["circle", "square", "triangle"]
TINY = ["--set", "model.width_multiplier=0.125", "--set", "model.num_classes=4",
        "--set", f"data.class_names={json.dumps(CLASSES)}", "--set", "data.shuffle_buffer=16",
        "--set", "train.log_step_count_steps=1", "--set", "train.save_summary_steps=2",
        "--set", "train.image_summary_steps=2", "--pretrained", "none"]


def tiny_config(**overrides):
    values = {"model.width_multiplier": 0.125, "model.num_classes": 4, "data.class_names": CLASSES,
              "data.shuffle_buffer": 16, "train.batch_size": 2}
    values.update(overrides)
    return load_config("ssd300_voc0712", values)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """16 small JPEGs with 1-3 rectangles each, in two shards."""
    directory = tmp_path_factory.mktemp("records")
    rng = np.random.default_rng(0)
    writers = [tf.io.TFRecordWriter(str(directory / f"shapes-{i:05d}-of-00002")) for i in range(2)]
    for index in range(16):
        height, width = int(rng.integers(40, 72)), int(rng.integers(40, 72))
        pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, 4))):
            y0, x0 = rng.uniform(0, 0.6, size=2)
            y1, x1 = y0 + rng.uniform(0.2, 0.4), x0 + rng.uniform(0.2, 0.4)
            label = int(rng.integers(1, 4))
            pixels[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = 80 * label
            boxes.append([y0, x0, y1, x1])
            labels.append(label)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG")
        example = make_example(encoded=buffer.getvalue(), image_format="jpeg", height=height,
                               width=width, filename=f"{index:03d}.jpg", source_id=f"{index:03d}",
                               boxes=boxes, labels=labels, texts=[CLASSES[l - 1] for l in labels],
                               difficult=[0] * len(labels), truncated=[0] * len(labels))
        writers[index % 2].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return directory


def _train_command(records, model_dir, *args):
    return [sys.executable, str(ROOT / "train.py"), f"--data_dir={records}", f"--model_dir={model_dir}",
            *TINY, *args]


def _run(command, timeout=120):
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _checkpoint_step(path):
    return int(tf.train.load_checkpoint(path).get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE"))


def _all_finite(path):
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            return False
    return True


def test_kill_resume_and_refused_shape_change(records, tmp_path):
    model_dir = tmp_path / "model"
    command = _train_command(records, model_dir, "--batch_size=2", "--max_steps=16",
                             "--set", "train.save_checkpoints_steps=2")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while tf.train.latest_checkpoint(str(model_dir)) is None and time.time() < deadline:
            assert process.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        assert process.poll() is None, "training ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = _checkpoint_step(tf.train.latest_checkpoint(str(model_dir)))
    assert 2 <= killed_at < 16

    result = _run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"(step {killed_at})" in result.stderr  # "restored <path> (step N)"
    latest = tf.train.latest_checkpoint(str(model_dir))
    assert _checkpoint_step(latest) == 16 and latest.endswith("ckpt-16")
    assert _all_finite(latest)
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["train"]["max_steps"] == 16 and saved["model"]["width_multiplier"] == 0.125
    assert list(model_dir.glob("events.out.tfevents.*"))

    # a resumed run may not change the variable shapes, and says which field it refuses
    refused = _run(_train_command(records, model_dir, "--set", "model.width_multiplier=0.25"))
    assert refused.returncode != 0
    assert "model.width_multiplier" in refused.stderr and "changes the model's variable shapes" in refused.stderr
    assert _checkpoint_step(tf.train.latest_checkpoint(str(model_dir))) == 16


def test_non_finite_loss_names_the_step_and_the_remedy(records, tmp_path):
    model_dir = tmp_path / "model"
    result = _run(_train_command(records, model_dir, "--batch_size=2", "--max_steps=30",
                                 "--learning_rate=1e12", "--set", "train.lr_boundaries=[]",
                                 "--set", "train.lr_factors=[1.0]", "--set", "train.save_checkpoints_steps=1"))
    assert result.returncode != 0
    # the loss, or (when an update overflows first) a weight at the next save: one line either way
    assert "train.py: error: " in result.stderr and "Traceback" not in result.stderr
    assert "is not finite at step" in result.stderr
    # no warm-up in this schedule to lengthen: the learning rate is the remedy
    assert "Remedies: a lower --learning_rate (now 1e+12)" in result.stderr
    for index in model_dir.glob("ckpt-*.index"):
        assert _all_finite(str(index)[: -len(".index")]), index


def test_batch_that_does_not_split_over_replicas(records, tmp_path):
    script = ("import sys, tensorflow as tf\n"
              "cpu = tf.config.list_physical_devices('CPU')[0]\n"
              "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
              f"sys.path.insert(0, {str(ROOT)!r})\n"
              "import train\n"
              "from absl import app\n"
              "app.run(train.main, argv=sys.argv)\n")
    command = [sys.executable, "-c", script, f"--data_dir={records}", f"--model_dir={tmp_path}",
               *TINY, "--batch_size=5", "--strategy=mirrored"]
    result = _run(command)
    assert result.returncode != 0
    assert "batch 5 does not split over 2 replicas; use 4 or 6" in result.stderr


def test_missing_data_files(tmp_path):
    result = _run([sys.executable, str(ROOT / "train.py"), f"--data_dir={tmp_path}/nothing-*",
                   f"--model_dir={tmp_path}/model", *TINY])
    assert result.returncode != 0
    assert "no data files" in result.stderr and "nothing-*" in result.stderr
    assert not (tmp_path / "model" / "config.json").exists()  # a failed start binds nothing


def test_resolve_config_keeps_saved_config_as_base_and_lists_changes(tmp_path):
    from ssd.config.loading import ConfigError
    from ssd.config.resume import resolve_config
    saved = tiny_config(**{"train.learning_rate": 0.002})
    save_config(saved, tmp_path)
    config, changes = resolve_config(str(tmp_path), "ssd300_voc0712", False, {"train.max_steps": 77})
    assert config.train.learning_rate == 0.002 and config.train.max_steps == 77
    assert changes == {"train.max_steps": (120000, 77)}
    with pytest.raises(ConfigError, match="model.num_classes"):
        resolve_config(str(tmp_path), "ssd300_voc0712", True, {})  # the recipe has 21 classes


@pytest.mark.parametrize("mixed_precision, jit_compile", [
    ("float16", False), ("bfloat16", False), ("none", True)])
def test_precision_and_xla_variants_train_with_finite_loss(records, tmp_path, mixed_precision, jit_compile):
    from ssd.data.input_fn import make_input_fn
    from ssd.engine.estimator import Estimator, RunConfig
    from ssd.engine.model_fn import SSDModelFn
    from ssd.modes import ModeKeys
    config = tiny_config(**{"train.mixed_precision": mixed_precision, "train.jit_compile": jit_compile})
    run_config = RunConfig(model_dir=str(tmp_path), save_summary_steps=1, log_step_count_steps=1,
                           mixed_precision=mixed_precision, jit_compile=jit_compile)
    estimator = Estimator(SSDModelFn, config, run_config)
    estimator.train(make_input_fn(str(records), config, ModeKeys.TRAIN), max_steps=2)
    assert estimator.global_step == 2
    losses = _summary_values(tmp_path, "loss")
    assert len(losses) == 2 and all(np.isfinite(losses))
    expected = {"none": "float32", "float16": "float16", "bfloat16": "bfloat16"}[mixed_precision]
    assert estimator.model.get_layer("conv1_1").compute_dtype == expected


def _summary_values(directory, tag):
    values = {}
    for path in Path(directory).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return [values[s] for s in sorted(values)]


def test_learning_rate_schedule_matches_the_seed_recipe():
    from ssd.engine.optimizers import learning_rate_at
    train_config = load_config("ssd300_voc0712").train  # 1e-3 x [0.1, 1, 0.1, 0.01] at 500, 80k, 100k
    expected = {0: 1e-4, 499: 1e-4, 500: 1e-3, 79_999: 1e-3, 80_000: 1e-4, 99_999: 1e-4,
                100_000: 1e-5, 119_999: 1e-5}
    for step, rate in expected.items():
        assert float(learning_rate_at(step, train_config)) == pytest.approx(rate, rel=1e-6), step
    floored = load_config("ssd300_voc0712", {"train.lr_floor": 5e-5}).train
    assert float(learning_rate_at(100_000, floored)) == pytest.approx(5e-5)


def test_ssd_evaluate_predict_and_image_summaries(records, tmp_path):
    from ssd.data.input_fn import make_input_fn
    from ssd.engine.estimator import Estimator, RunConfig
    from ssd.engine.model_fn import SSDModelFn
    from ssd.modes import ModeKeys
    config = tiny_config(**{"eval.batch_size": 5})
    run_config = RunConfig(model_dir=str(tmp_path), save_image_summary_steps=2)
    estimator = Estimator(SSDModelFn, config, run_config)
    estimator.train(make_input_fn(str(records), config, ModeKeys.TRAIN), max_steps=2)
    tags = set()
    for path in tmp_path.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(v.tag for v in event.summary.value if event.step == 2)
    assert "train/images_with_ground_truth" in tags

    metrics = estimator.evaluate(make_input_fn(str(records), config, ModeKeys.EVAL))
    assert metrics["global_step"] == 2 and metrics["num_images"] == 16
    assert set(metrics["classes"]) == set(CLASSES)
    assert metrics["mAP"] is None or 0.0 <= metrics["mAP"] <= 1.0

    predictions = list(estimator.predict(make_input_fn(str(records), config, ModeKeys.PREDICT)))
    assert len(predictions) == 16
    first = predictions[0]
    k = config.eval.max_detections
    assert first["boxes"].shape == (k, 4) and first["scores"].shape == (k,)
    height, width = first["original_shape"]
    np.testing.assert_allclose(first["pixel_boxes"], first["boxes"] * [height, width, height, width],
                               rtol=1e-6)
    assert sorted(p["image_id"].decode() for p in predictions) == [f"{i:03d}" for i in range(16)]


def test_damaged_training_files_are_named_without_a_traceback(records, tmp_path):
    # a file that is not a TFRecord file: refused before anything is written into model_dir
    not_records = tmp_path / "not_records"
    not_records.mkdir()
    (not_records / "photos-00000-of-00001").write_bytes(b"\xff\xd8\xff\xe0 a JPEG, not records" * 20)
    model_dir = tmp_path / "model_a"
    result = _run(_train_command(not_records, model_dir, "--batch_size=2", "--max_steps=2"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "train.py: error:" in result.stderr and "photos-00000-of-00001" in result.stderr
    assert not (model_dir / "config.json").exists()

    # a record damaged in the middle of a shard: named when training reaches it
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for shard in sorted(records.iterdir()):
        data = shard.read_bytes()
        if shard.name.endswith("00001-of-00002"):
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        (damaged / shard.name).write_bytes(data)
    result = _run(_train_command(damaged, tmp_path / "model_b", "--batch_size=2", "--max_steps=40"))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "shapes-00001-of-00002: a record is damaged" in result.stderr
    # with the converter's summary beside the shards the class check reads no records: training
    # itself meets the damaged record, and names its file
    (damaged / "shapes_summary.json").write_text(json.dumps({"classes": CLASSES}))
    result = _run(_train_command(damaged, tmp_path / "model_c", "--batch_size=2", "--max_steps=40"))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "shapes-00001-of-00002: a record is damaged" in result.stderr
    assert "shapes_summary.json" in result.stderr  # where to find which images the shard held
