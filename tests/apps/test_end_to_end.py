"""The newcomer's path end to end: `python demo.py --quick` stage by stage.

One quick demo run (tiny data, tiny network, a few steps, the real command lines as
subprocesses) is shared by the tests below; each checks one stage's outputs. The mAP of such a
run means nothing and is not asserted.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # demo.py is an app at the top of the repository
    sys.path.insert(0, str(ROOT))

import demo  # noqa: E402
from ssd.progress import format_duration  # noqa: E402

pytestmark = pytest.mark.slow  # trains a model or starts processes


CLASSES = ["circle", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    stream = io.StringIO()
    summary = demo.run_demo(output_dir, seed=3, quick=True, stream=stream)
    return output_dir, summary, stream.getvalue()


def _count_records(pattern: Path) -> int:
    files = sorted(str(p) for p in pattern.parent.glob(pattern.name))
    assert files, f"no files match {pattern}"
    return sum(1 for _ in tf.data.TFRecordDataset(files))


def test_data_set_has_the_requested_splits(quick_run):
    output_dir, _, _ = quick_run
    main = output_dir / "shapes" / "ImageSets" / "Main"
    trainval = (main / "trainval.txt").read_text().split()
    test = (main / "test.txt").read_text().split()
    assert len(trainval) == demo.QUICK.num_trainval
    assert len(test) == demo.QUICK.num_test
    assert not set(trainval) & set(test)
    for image_id in trainval + test:
        assert (output_dir / "shapes" / "JPEGImages" / f"{image_id}.jpg").is_file()
        assert (output_dir / "shapes" / "Annotations" / f"{image_id}.xml").is_file()


def test_record_counts_equal_image_counts(quick_run):
    output_dir, _, _ = quick_run
    records = output_dir / "tfrecords"
    assert _count_records(records / "shapes_trainval-*") == demo.QUICK.num_trainval
    assert _count_records(records / "shapes_test-*") == demo.QUICK.num_test
    summary = json.loads((records / "shapes_test_summary.json").read_text())
    assert summary["classes"] == CLASSES


def test_checkpoint_written_at_max_steps(quick_run):
    output_dir, _, _ = quick_run
    model_dir = output_dir / "model"
    latest = tf.train.latest_checkpoint(str(model_dir))
    assert latest is not None and latest.endswith(f"ckpt-{demo.QUICK.max_steps}")
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["data"]["class_names"] == CLASSES
    assert saved["train"]["max_steps"] == demo.QUICK.max_steps
    assert saved["model"]["architecture"] == "ssd300" and saved["model"]["input_size"] == 300
    assert list(model_dir.glob("events.out.tfevents.*")), "no TensorBoard summaries"


def test_eval_report_has_an_ap_for_every_class(quick_run):
    output_dir, summary, _ = quick_run
    report = json.loads((output_dir / "eval" / "voc07" / "summary.json").read_text())
    assert report["step"] == demo.QUICK.max_steps
    assert report["num_images"] == demo.QUICK.num_test
    assert list(report["classes"]) == CLASSES
    for name, ap in report["classes"].items():
        assert ap is None or 0.0 <= ap <= 1.0, (name, ap)
    defined = [ap for ap in report["classes"].values() if ap is not None]
    assert report["mAP"] == pytest.approx(sum(defined) / len(defined))
    assert summary["evaluation"]["classes"] == report["classes"]
    assert len(list((output_dir / "eval" / "voc07" / "results").glob("comp4_det_test_*.txt"))) == len(CLASSES)


def test_pictures_are_drawn_from_the_test_images(quick_run):
    output_dir, summary, _ = quick_run
    pictures = sorted((output_dir / "pictures").iterdir())
    assert len(pictures) == demo.QUICK.num_pictures
    test_ids = (output_dir / "shapes" / "ImageSets" / "Main" / "test.txt").read_text().split()
    for picture in pictures:
        assert picture.stem in test_ids
        original = np.asarray(Image.open(output_dir / "shapes" / "JPEGImages" / f"{picture.stem}.jpg"))
        drawn = np.asarray(Image.open(picture).convert("RGB"))
        # detections beside ground truth: at least the original's size, and not a copy of it
        assert drawn.shape[0] >= original.shape[0] and drawn.shape[1] >= original.shape[1]
        assert drawn.shape != original.shape or np.any(drawn != original)
    assert summary["pictures"] == [str(p) for p in pictures]


def test_summary_names_every_stage_and_where_things_went(quick_run):
    output_dir, summary, streamed = quick_run
    names = [stage["name"] for stage in summary["stages"]]
    assert names == ["make data", "convert trainval", "convert test", "train", "evaluate", "visualize"]
    assert all(stage["seconds"] > 0 for stage in summary["stages"])
    assert summary["total_seconds"] >= sum(stage["seconds"] for stage in summary["stages"]) - 1
    assert json.loads((output_dir / "demo_summary.json").read_text()) == summary
    for stage in summary["stages"]:
        assert f"$ {stage['command']}" in streamed  # each command is shown before it runs
        assert (output_dir / "logs" / f"{stage['name'].replace(' ', '_')}.log").is_file()
    text = demo.format_summary(summary)
    tensorboard = Path(sys.executable).parent / "tensorboard"
    assert f"{demo.display_path(tensorboard)} --logdir {output_dir / 'model'}" in text
    assert tensorboard.is_file()  # installed with the package
    for stage in summary["stages"]:  # each with its time, as the progress lines show times
        assert f"{format_duration(stage['seconds']):>7}  $ {stage['command']}" in text
    # the training log is streamed with its progress and ETA
    assert "ETA" in (output_dir / "logs" / "train.log").read_text()


def test_failing_stage_names_command_and_exit_code(tmp_path):
    stage = demo.Stage("fail", (sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"))
    with pytest.raises(demo.StageError) as caught:
        demo.run_stage(stage, tmp_path / "fail.log", cwd=tmp_path, stream=io.StringIO())
    message = str(caught.value)
    assert caught.value.returncode == 3
    assert "exit code 3" in message and "sys.exit(3)" in message and "boom" in message
    assert str(tmp_path / "fail.log") in message


def test_no_tensorflow_startup_lines_reach_the_terminal(quick_run):
    """Every stage's app keeps TensorFlow's start-up chatter off (ssd.cli): the demo passes its
    children's output through as it is; the stage logs show the same output."""
    _, summary, output = quick_run
    for noise in ("absl::InitializeLog", "I0000 00:00:", "oneDNN custom operations", "cpu_feature_guard"):
        assert noise not in output, noise
    assert "--- demo: training runs at" in output  # the speed and the time left, once measured


def test_training_speed_report_estimates_the_rest_of_the_demo():
    out = io.StringIO()
    settings = demo.DemoSettings(num_trainval=2000, num_test=300, num_pictures=8)
    report = demo.TrainingSpeedReport(settings, out, clock=lambda: 0.0)
    line = ("I1203 09:41:20.165697 140459207150464 training.py:241] step 25/900: loss 8.9, accuracy 0.6 "
            "| 0.926 steps/s, 15.00 examples/s, ETA 0:15:45\n")
    report("I1203 09:41:00 training.py:200] saved checkpoint\nstep 1 of something\n" + line[:40])
    assert out.getvalue() == "" and not report.reported  # the progress line is not complete yet
    report(line[40:] + line)
    # after training: two app start-ups, 8 pictures, 300 test images at 3 x 15 images/s
    after = 2 * demo.STAGE_STARTUP_SECONDS + 8 * demo.SECONDS_PER_PICTURE + 300 / 45.0
    expected_total = 945 + after
    text = out.getvalue()
    assert text.count("--- demo:") == 1  # once
    assert "training runs at 15.0 images/s (0.926 steps/s)" in text
    assert "training ends in about 16 min" in text
    assert f"the whole demo in about {round(expected_total / 60)} min" in text
