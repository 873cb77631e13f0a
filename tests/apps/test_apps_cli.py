"""What a person reads from the apps: --help, usage errors, a quiet start-up, one-line failures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from ssd.modeling import checkpoints

from ssd import cli
from ssd.config.loading import load_config, save_config
from ssd.engine.estimator import ModelContext
from ssd.engine.model_fn import SSDModelFn

pytestmark = pytest.mark.slow  # trains a model or starts processes


ROOT = Path(__file__).resolve().parents[2]
APPS = {  # command -> its module docstring's first words
    "train.py": ["train.py"],
    "eval.py": ["eval.py"],
    "visualize.py": ["visualize.py"],
    "export.py": ["export.py"],
    "demo.py": ["demo.py"],
    "convert_voc.py": ["dataset/convert_voc.py"],
    "convert_coco.py": ["dataset/convert_coco.py"],
    "make_shapes.py": ["dataset/make_shapes.py"],
    "voc_eval.py": ["-m", "ssd.voc.eval"],
}
STARTUP_NOISE = ("oneDNN custom operations", "This TensorFlow binary is optimized",
                 "absl::InitializeLog", "cpu_feature_guard")


def _environment(**extra):
    """The user's environment, without the test suite's own TF_CPP_MIN_LOG_LEVEL."""
    env = {k: v for k, v in os.environ.items() if k != cli.LOG_LEVEL_VARIABLE}
    env.update(extra)
    return env


def _run(arguments, env=None, timeout=120):
    return subprocess.run([sys.executable, *arguments], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env or _environment())


@pytest.mark.parametrize("app", sorted(APPS))
def test_help_exits_0_with_the_flags_and_no_startup_lines(app):
    result = _run([*APPS[app], "--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--" in result.stdout and len(result.stdout.splitlines()) > 5
    assert not any(noise in result.stderr for noise in STARTUP_NOISE), result.stderr[-2000:]


@pytest.mark.parametrize("arguments, message", [
    (["train.py", "--model_dir=x"], "train.py: error: --data_dir is required (see --help)"),
    (["eval.py", "--model_dir=x"], "eval.py: error: --data_dir is required (see --help)"),
    (["eval.py", "--data_dir=x"], "eval.py: error: --model_dir (or --exported_model) is required (see --help)"),
    (["eval.py", "--exported_model=x"], "eval.py: error: --data_dir is required (see --help)"),
    (["eval.py", "--exported_model=x", "--data_dir=y", "--checkpoint_path=z"],
     "eval.py: error: --checkpoint_path: for checkpoints only, not with --exported_model (see --help)"),
    (["export.py", "--model_dir=x"], "export.py: error: --export_dir is required (see --help)"),
    (["visualize.py", "--images=x"], "visualize.py: error: --output_dir is required (see --help)"),
    (["dataset/convert_voc.py", "--voc_root=x"],
     "convert_voc.py: error: --output_directory is required (see --help)"),
    (["dataset/convert_coco.py"],
     "convert_coco.py: error: --annotations_file and --image_dir are required (see --help)"),
    (["dataset/make_shapes.py"], "make_shapes.py: error: --output_dir is required (see --help)"),
    (["train.py", "--model_dir=x", "--data_dir=y", "--bach_size=8"],
     "train.py: error: Unknown command line flag 'bach_size'. Did you mean: batch_size ? (see --help)"),
    (["eval.py", "--batch_size=many"],
     "eval.py: error: flag --batch_size=many: invalid literal for int() with base 10: 'many' (see --help)"),
    (["-m", "ssd.voc.eval", "--annotations_dir=a", "--imageset=b", "--results_dir=c", "extra"],
     "python -m ssd.voc.eval: error: unexpected arguments: extra (see --help)"),
])
def test_usage_error_is_one_line_and_exit_2(arguments, message):
    result = _run(arguments)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]
    assert result.stdout == ""


def test_a_run_keeps_tensorflow_startup_quiet_unless_the_user_sets_the_level():
    script = ("from ssd import cli\ncli.quiet_tensorflow_startup()\nimport os, tensorflow as tf\n"
              "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], int(tf.constant(2) * 3))\n")
    quiet = _run(["-c", script])
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split() == [cli.QUIET_LEVEL, "6"]
    assert not any(noise in quiet.stderr for noise in STARTUP_NOISE), quiet.stderr
    chosen = _run(["-c", script], env=_environment(TF_CPP_MIN_LOG_LEVEL="0"))
    assert chosen.returncode == 0 and chosen.stdout.split() == ["0", "6"]  # the user's level stays
    silenced = _run(["-c", script], env=_environment(TF_CPP_MIN_LOG_LEVEL="3"))
    assert silenced.returncode == 0 and silenced.stdout.split() == ["3", "6"]
    assert silenced.stderr == ""


def test_a_failed_import_shows_its_error():
    script = ("import sys\nfrom ssd import cli\ncli.quiet_tensorflow_startup()\n"
              "sys.modules['tensorflow.python'] = None\nimport tensorflow\n")
    result = _run(["-c", script])
    assert result.returncode == 1
    assert "ModuleNotFoundError" in result.stderr or "ImportError" in result.stderr


CAPTURED = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1796.5 42 port.cc:153] oneDNN custom operations are on.\n"
            "I0000 00:00:1796.6 42 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"
            "To enable the following instructions: AVX2 FMA, in other operations, rebuild.\n"
            "E0000 00:00:1796.7 42 cuda_dnn.cc:1] Unable to register cuDNN factory\n"
            "2025-09-17 14:44:05.157831: I external/cudart_stub.cc:32] Could not find cuda drivers\n"
            "2025-09-17 14:44:05.176998: W external/x.cc:1] a real warning\n"
            "  its second line\n")


@pytest.mark.parametrize("level, kept", [
    (0, CAPTURED.splitlines(keepends=True)),
    (1, CAPTURED.splitlines(keepends=True)[4:5] + CAPTURED.splitlines(keepends=True)[6:]),
    (2, CAPTURED.splitlines(keepends=True)[4:5]),
    (3, []),
])
def test_captured_startup_output_keeps_what_the_level_lets_through(level, kept):
    # a line before any message is no message's continuation: kept whatever the level
    assert cli.log_at_level("a line of its own\n" + CAPTURED, level) == "a line of its own\n" + "".join(kept)


# --- a checkpoint that does not fit the config ------------------------------------------------

@pytest.fixture(scope="module")
def mismatched_model_dir(tmp_path_factory):
    """A model directory whose checkpoint (model, step and optimizer, as the trainer writes it)
    was trained for 3 classes while its config.json says 4."""
    model_dir = tmp_path_factory.mktemp("mismatch")
    names = ["circle", "square", "triangle"]
    trained = load_config("ssd300_voc0712", {"model.width_multiplier": 0.125, "model.num_classes": 4,
                                             "data.class_names": names})
    step = tf.Variable(1, dtype=tf.int64, trainable=False, name="global_step")
    holder = SSDModelFn(trained, ModelContext(step, 1))
    holder.optimizer.build(holder.model.trainable_variables)
    items = checkpoints.training_items(holder.model, step, holder.optimizer)
    checkpoints.Checkpointer(items, str(model_dir), max_to_keep=1).save(1)
    save_config(load_config("ssd300_voc0712", {"model.width_multiplier": 0.125, "model.num_classes": 5,
                                               "data.class_names": names + ["star"]}), model_dir)
    return model_dir


@pytest.mark.parametrize("app", ["export.py", "visualize.py"])
def test_checkpoint_mismatch_prints_its_message_only(mismatched_model_dir, tmp_path, app):
    if app == "export.py":
        arguments = [app, f"--model_dir={mismatched_model_dir}", f"--export_dir={tmp_path / 'exported'}"]
    else:
        from PIL import Image
        Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
        arguments = [app, f"--model_dir={mismatched_model_dir}", f"--images={tmp_path / 'a.png'}",
                     f"--output_dir={tmp_path / 'drawn'}"]
    result = _run(arguments)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{app}: error: checkpoint ") and "does not fit the model" in lines[0]
    assert "model.num_classes=5" in lines[0]
    assert len(lines) < 5, result.stderr[-3000:]
    assert "Value in checkpoint could not be found" not in result.stderr


# --- the same user mistakes, one line from every app --------------------------------------------

def _one_line_error(result, app: str) -> str:
    """The error line of a run that failed with a user error: exit 1, no traceback."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{app}: error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def _image_records(path: Path, count: int) -> Path:
    """`count` tiny PNG image examples in one TFRecord file."""
    import io

    import numpy as np
    from PIL import Image

    from ssd.data.records import make_example

    with tf.io.TFRecordWriter(str(path)) as writer:
        for index in range(count):
            buffer = io.BytesIO()
            Image.fromarray(np.full((20, 30, 3), 40 * index, np.uint8)).save(buffer, format="PNG")
            writer.write(make_example(
                encoded=buffer.getvalue(), image_format="png", height=20, width=30,
                filename=f"{index}.png", source_id=str(index), boxes=[[0.1, 0.1, 0.5, 0.5]],
                labels=[1], texts=["circle"], difficult=[0], truncated=[0]).SerializeToString())
    return path


@pytest.mark.parametrize("app", ["train.py", "eval.py"])
def test_a_folder_of_two_data_sets_is_one_line_from_every_app(mismatched_model_dir, tmp_path, app):
    data = tmp_path / "records"
    data.mkdir()
    for name in ("voc07_test", "voc0712_trainval"):
        _image_records(data / f"{name}-00000-of-00001", 1)
    model_dir = tmp_path / "fresh" if app == "train.py" else mismatched_model_dir
    arguments = [app, f"--data_dir={data}", f"--model_dir={model_dir}"]
    if app == "train.py":
        arguments += ["--config=ssd300_shapes_cpu", "--pretrained=none"]
    line = _one_line_error(_run(arguments), app)
    first, second = sorted(("voc07_test", "voc0712_trainval"))
    assert f"holds several data sets ({first}, {second})" in line
    assert f"pass a file pattern such as {data / first}-*" in line


@pytest.mark.parametrize("bad", ["summary", "not_records"])
def test_export_names_a_calibration_file_that_is_no_tfrecord_file(tmp_path, bad):
    from tests.assets.shapes_model import MODEL_DIR

    if bad == "summary":
        calibration = tmp_path / "shapes_train_summary.json"
        calibration.write_text('{"images": 3}')
        expected = f"{calibration}: the converter's description of the data set shapes_train"
    else:
        calibration = tmp_path / "photos.tfrecord"
        calibration.write_bytes(b"\xff\xd8 a JPEG, not records" * 4)
        expected = f"{calibration}: not a TFRecord file"
    result = _run(["export.py", f"--model_dir={MODEL_DIR}", f"--export_dir={tmp_path / 'out'}",
                   "--format=tflite", "--quantize=int8", f"--calibration_data={calibration}"])
    line = _one_line_error(result, "export.py")
    assert expected in line
    if bad == "summary":
        assert f"{tmp_path / 'shapes_train'}-*" in line  # the fix: its shards
    assert not (tmp_path / "out").exists()


def test_export_says_how_many_images_calibrated_when_fewer_than_asked(tmp_path):
    from tests.assets.shapes_model import MODEL_DIR

    records = _image_records(tmp_path / "few-00000-of-00001", 3)
    result = _run(["export.py", f"--model_dir={MODEL_DIR}", f"--export_dir={tmp_path / 'out'}",
                   "--format=tflite", "--quantize=int8", f"--calibration_data={records}",
                   "--calibration_images=50"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"int8, calibrated on 3 images of {records} (it holds only 3; "
            f"--calibration_images=50 asked for more)") in result.stdout
