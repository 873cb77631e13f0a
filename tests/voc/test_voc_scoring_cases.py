"""Classes without ground truth or without detections, empty and stray result files, class lists
that do not fit the data: the metric, the file scorer and its command line, checked against APs
computed by hand."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssd.voc.eval import UnknownClassesError, evaluate_files
from ssd.evaluator import STATUS_NO_DETECTIONS, STATUS_NO_GROUND_TRUTH, STATUS_OK
from ssd.voc.metric import VOCEvaluator, evaluate_class, summary_of
from ssd.voc.table import format_table

REPO = Path(__file__).resolve().parents[2]
A = [1, 1, 10, 10]
B = [21, 21, 30, 30]
FAR = [50, 50, 60, 60]
# Class "a" below: two ground truths, detections hit (0.9), miss (0.8), hit (0.7):
# recall .5, .5, 1 and precision 1, 1/2, 2/3.
# VOC07: thresholds 0 .. 0.5 (six) see precision 1, 0.6 .. 1.0 (five) see 2/3 -> (6 + 10/3) / 11.
AP07_A = (6 + 5 * 2 / 3) / 11
# VOC12: recall 0 -> .5 at envelope 1, .5 -> 1 at envelope 2/3.
AP12_A = 0.5 * 1 + 0.5 * 2 / 3


def write_xml(path, objects):
    body = "".join(f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox>"
                   f"<xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
                   f"</bndbox></object>" for name, b, difficult in objects)
    path.write_text(f"<annotation><size><width>100</width><height>100</height></size>{body}</annotation>")


def make_data(tmp_path, names=("a", "b", "d")):
    """Images x, y. Class names[0]: the class "a" above; names[1]: one ground truth, no detection;
    names[2]: only a difficult ground truth, with a detection on it."""
    a, b, d = names
    ann = tmp_path / "Annotations"
    ann.mkdir()
    write_xml(ann / "x.xml", [(a, A, False), (b, B, False), (d, FAR, True)])
    write_xml(ann / "y.xml", [(a, A, False)])
    (tmp_path / "test.txt").write_text("x\ny\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / f"comp4_det_test_{a}.txt").write_text("x 0.9 1 1 10 10\nx 0.8 50 50 60 60\ny 0.7 1 1 10 10\n")
    (results / f"comp4_det_test_{d}.txt").write_text("x 0.5 50 50 60 60\n")
    return ann, tmp_path / "test.txt", results


def test_class_with_detections_and_no_ground_truth_has_no_ap():
    # once an IndexError: detections to match and not a single ground truth of the class
    recall, precision, ap, npos = evaluate_class((["x", "y"], [0.9, 0.8], np.array([A, B])), {})
    assert ap is None and npos == 0
    np.testing.assert_array_equal(recall, [0, 0])
    np.testing.assert_array_equal(precision, [0, 0])
    _, _, ap, _ = evaluate_class((["x"], [0.9], np.array([A])), {"x": (np.zeros((0, 4)), [])})
    assert ap is None


@pytest.mark.parametrize("metric, expected_a", [("voc07", AP07_A), ("voc12", AP12_A)])
def test_evaluator_statuses_and_mean(metric, expected_a):
    ev = VOCEvaluator(["a", "b", "c", "d"], metric)
    # c: detections, no ground truth at all; b: ground truth, no detection; d: only difficult
    ev.add_image("x", [A, B, FAR], [1, 2, 4], [False, False, True],
                 [A, FAR, FAR, B, FAR], [0.9, 0.8, 0.6, 0.5, 0.4], [1, 1, 3, 3, 4])
    ev.add_image("y", [A], [1], [False], [A], [0.7], [1])
    result = ev.result()
    assert result["classes"]["a"] == pytest.approx(expected_a, abs=1e-15)
    assert result["classes"]["b"] == 0.0
    assert result["classes"]["c"] is None and result["classes"]["d"] is None
    assert result["status"] == {"a": STATUS_OK, "b": STATUS_NO_DETECTIONS, "c": STATUS_NO_GROUND_TRUTH,
                                "d": STATUS_NO_GROUND_TRUTH}
    assert result["num_detections"] == {"a": 3, "b": 0, "c": 2, "d": 1}
    assert result["num_positives"] == {"a": 2, "b": 1, "c": 0, "d": 0}
    assert result["num_difficult"] == {"a": 0, "b": 0, "c": 0, "d": 1}
    # b counts in the mean with AP 0, c and d are left out
    assert result["mAP"] == pytest.approx(expected_a / 2, abs=1e-15)
    table = format_table(result)
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert rows["b"].split()[1:] == ["0.0", "no", "detections"]
    assert rows["c"].split()[1:] == ["n/a", "no", "ground", "truth"]
    assert rows["d"].split()[1:] == ["n/a", "no", "ground", "truth", "(only", "1", "difficult)"]
    assert rows["mAP"].split()[1] == f"{100 * expected_a / 2:.1f}"
    assert "left out of the mAP" in table
    json.dumps(summary_of(result))  # no arrays left in what goes to JSON


def test_nothing_to_score_gives_no_map():
    ev = VOCEvaluator(["a"])
    ev.add_image("x", np.zeros((0, 4)), [], [], [A], [0.5], [1])
    result = ev.result()
    assert result["classes"] == {"a": None} and result["mAP"] is None
    assert format_table(result).splitlines()[-2].split() == ["mAP", "n/a"]


def test_table_of_a_json_summary_without_statuses():
    # what `make demo` prints: a summary written before statuses existed
    table = format_table({"metric": "voc07", "classes": {"a": 0.5, "b": None}, "mAP": 0.5, "num_images": 3})
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:3]}
    assert rows == {"a": ["50.0"], "b": ["n/a", "no", "ground", "truth"]}


def test_files_with_every_kind_of_class(tmp_path, caplog):
    ann, imageset, results = make_data(tmp_path)
    (results / "comp4_det_test_b.txt").write_text("")  # an empty file: no detections
    (results / "comp4_det_test_zebra.txt").write_text("nowhere 0.9 1 1 2 2\n")  # not in the class list
    with caplog.at_level(logging.WARNING):
        # "e" and "f": a class list longer than the data's
        result = evaluate_files(ann, imageset, results, "voc07", ["a", "b", "d", "e", "f"])
    assert result["classes"]["a"] == pytest.approx(AP07_A, abs=1e-15)
    assert result["classes"]["b"] == 0.0
    assert [result["classes"][n] for n in "def"] == [None, None, None]
    assert result["status"] == {"a": STATUS_OK, "b": STATUS_NO_DETECTIONS, "d": STATUS_NO_GROUND_TRUTH,
                                "e": STATUS_NO_GROUND_TRUTH, "f": STATUS_NO_GROUND_TRUTH}
    assert result["mAP"] == pytest.approx(AP07_A / 2, abs=1e-15)
    assert result["unknown_classes"] == {}
    messages = caplog.text
    assert "comp4_det_test_zebra.txt is ignored" in messages and "'zebra'" in messages
    assert "comp4_det_test_e.txt is missing" in messages and "comp4_det_test_f.txt is missing" in messages
    assert "comp4_det_test_b.txt" not in messages  # empty is not missing


def test_files_when_no_class_has_detections(tmp_path):
    ann, imageset, results = make_data(tmp_path)
    for path in results.iterdir():
        path.write_text("\n\n")
    result = evaluate_files(ann, imageset, results, "voc12", ["a", "b", "d"])
    assert result["classes"] == {"a": 0.0, "b": 0.0, "d": None}
    assert result["mAP"] == 0.0


def test_files_count_objects_of_classes_outside_the_list(tmp_path):
    ann, imageset, results = make_data(tmp_path)
    result = evaluate_files(ann, imageset, results, "voc07", ["a"])
    assert result["unknown_classes"] == {"b": 1, "d": 1}
    assert result["classes"]["a"] == pytest.approx(AP07_A, abs=1e-15)
    assert "b (1), d (1)" in format_table(result)


def test_files_can_refuse_classes_outside_the_list(tmp_path):
    ann, imageset, results = make_data(tmp_path, names=("cat", "square", "star"))
    with pytest.raises(UnknownClassesError, match=r"square \(1 object\), star \(1 object\)") as error:
        evaluate_files(ann, imageset, results, "voc07", ["dog", "cat"], refuse_unknown_classes=True)
    assert error.value.counts == {"square": 1, "star": 1}
    assert error.value.names_found == ["cat", "square", "star"]


def test_files_name_a_bad_annotation(tmp_path):
    ann, imageset, results = make_data(tmp_path)
    (ann / "y.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match=r"y\.xml: malformed XML"):
        evaluate_files(ann, imageset, results, "voc07", ["a"])
    (ann / "y.xml").unlink()
    with pytest.raises(ValueError, match=r"y\.xml: cannot read"):
        evaluate_files(ann, imageset, results, "voc07", ["a"])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ssd.voc.eval", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_reports_classes_without_ground_truth(tmp_path):
    ann, imageset, results = make_data(tmp_path)
    (results / "comp4_det_test_c.txt").write_text("x 0.3 1 1 10 10\n")  # detections, no ground truth
    out = tmp_path / "map.json"
    proc = run_cli("--annotations_dir", str(ann), "--imageset", str(imageset), "--results_dir", str(results),
                   "--classes", "a,b,c,d", "--output_json", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["classes"]["c"] is None and summary["classes"]["d"] is None
    assert summary["classes"]["a"] == pytest.approx(AP07_A, abs=1e-15) and summary["classes"]["b"] == 0.0
    assert summary["status"] == {"a": "ok", "b": "no_detections", "c": "no_ground_truth", "d": "no_ground_truth"}
    assert summary["mAP"] == pytest.approx(AP07_A / 2, abs=1e-15)
    assert summary["num_detections"]["c"] == 1
    assert "no ground truth" in proc.stdout and f"{100 * AP07_A / 2:.1f}" in proc.stdout


def test_cli_names_classes_that_are_not_vocs(tmp_path):
    ann, imageset, results = make_data(tmp_path, names=("circle", "square", "star"))
    common = ["--annotations_dir", str(ann), "--imageset", str(imageset), "--results_dir", str(results)]
    proc = run_cli(*common)
    assert proc.returncode != 0
    assert "not VOC's" in proc.stderr
    assert "circle (2 objects), square (1 object), star (1 object)" in proc.stderr
    assert "--classes=circle,square,star" in proc.stderr
    assert "Traceback" not in proc.stderr and "n/a" not in proc.stdout
    proc = run_cli(*common, "--classes=circle,square,star")
    assert proc.returncode == 0, proc.stderr
    map_row = next(line for line in proc.stdout.splitlines() if line.startswith("mAP"))
    assert map_row.split() == ["mAP", f"{100 * AP07_A / 2:.1f}"]
