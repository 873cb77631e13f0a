import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssd.voc.coords import voc_to_normalized
from ssd.voc.eval import evaluate_files
from ssd.voc.metric import VOCEvaluator, evaluate_class, voc_ap
from ssd.voc.table import format_table
from ssd.voc.results import read_result_file
from ssd.voc.annotations import read_annotation

REPO = Path(__file__).resolve().parents[2]


def ap_of(dets, gts, metric="voc07"):
    """dets: [(image, score, box)], gts: {image: [(box, difficult)]} -> (ap, recall, precision)."""
    detections = ([d[0] for d in dets], [d[1] for d in dets], np.array([d[2] for d in dets]).reshape(-1, 4))
    ground_truth = {k: (np.array([b for b, _ in v]).reshape(-1, 4), [d for _, d in v]) for k, v in gts.items()}
    recall, precision, ap, _ = evaluate_class(detections, ground_truth, metric=metric)
    return ap, recall, precision


# --- AP from precision/recall curves ---------------------------------------------------------

def test_11_point_thresholds_are_arange_values():
    # recall 3/10 is just below the 4th threshold 0.30000000000000004, so it does not reach it
    assert 3 / 10 < np.arange(0, 1.1, 0.1)[3]
    tp = np.array([1, 2, 3, 3, 3, 3, 3, 4])
    recall = tp / 10
    precision = tp / np.arange(1, 9)
    # t = 0, 0.1, 0.2 -> 1; t = 0.30000000000000004, 0.4 -> only the point at recall 0.4 (p 0.5)
    assert voc_ap(recall, precision, True) == pytest.approx((3 * 1.0 + 2 * 0.5) / 11, abs=1e-15)
    # likewise recall 6/10 misses the 7th threshold 0.6000000000000001
    recall = np.arange(1, 7) / 10
    assert voc_ap(recall, np.ones(6), True) == pytest.approx(6 / 11, abs=1e-15)


def test_both_metrics_on_hand_computed_curves():
    # step curve: recall 0.25 .. 1 with precision 1, 1, 0.5, 0.5
    recall = np.array([0.25, 0.5, 0.75, 1.0])
    precision = np.array([1.0, 1.0, 0.5, 0.5])
    assert voc_ap(recall, precision, False) == pytest.approx(0.25 + 0.25 + 0.125 + 0.125)
    # thresholds 0 .. 0.5 see precision 1 (6 of them), 0.6 .. 1.0 see 0.5 (5 of them)
    assert voc_ap(recall, precision, True) == pytest.approx((6 + 2.5) / 11)
    # the envelope lifts a dip: precision 0.4 at recall 0.5 is raised to the later 0.6
    recall = np.array([0.2, 0.5, 0.8])
    precision = np.array([1.0, 0.4, 0.6])
    assert voc_ap(recall, precision, False) == pytest.approx(0.2 * 1.0 + 0.3 * 0.6 + 0.3 * 0.6)
    # t = 0..0.2 -> 1 (3), t = 0.3..0.8 -> 0.6 (6), t = 0.9, 1.0 -> 0
    assert voc_ap(recall, precision, True) == pytest.approx((3 + 6 * 0.6) / 11)
    # a perfect curve is 1 in both, an empty one 0 in both
    assert voc_ap([0.5, 1.0], [1.0, 1.0], True) == pytest.approx(1.0)
    assert voc_ap([0.5, 1.0], [1.0, 1.0], False) == pytest.approx(1.0)
    assert voc_ap([], [], True) == 0.0 and voc_ap([], [], False) == 0.0


# --- evaluate_class: hand cases --------------------------------------------------------------

A = [1, 1, 10, 10]  # 10 x 10 pixels, area 100 in the devkit's +1 convention


def test_true_positive_duplicate_and_miss():
    gts = {"i": [(A, False), ([21, 21, 30, 30], False)]}
    dets = [("i", 0.9, A), ("i", 0.8, A), ("i", 0.7, [50, 50, 60, 60]), ("i", 0.6, [21, 21, 30, 30])]
    ap07, recall, precision = ap_of(dets, gts)
    np.testing.assert_allclose(recall, [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 1 / 3, 0.5])
    assert ap07 == pytest.approx(8.5 / 11)
    ap12, _, _ = ap_of(dets, gts, metric="voc12")
    assert ap12 == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)


def test_difficult_ground_truth_ignores_its_detections():
    gts = {"i": [([30, 30, 40, 40], True), (A, False)]}
    dets = [("i", 0.9, [30, 30, 40, 40]), ("i", 0.8, A), ("i", 0.7, [30, 30, 40, 40])]
    ap, recall, precision = ap_of(dets, gts)
    # the hits on the difficult box are neither TP nor FP: the curve is a single TP
    np.testing.assert_allclose(recall, [0.0, 1.0, 1.0])
    np.testing.assert_allclose(precision, [0.0, 1.0, 1.0])
    assert ap == pytest.approx(1.0)


def test_no_fall_back_to_the_second_best_ground_truth():
    b = [3, 1, 12, 10]
    gts = {"i": [(A, False), (b, False)]}
    # second detection: IoU 100/110 with A (already matched), 90/120 = 0.75 with b
    dets = [("i", 0.9, A), ("i", 0.8, [1, 1, 11, 10])]
    ap, recall, precision = ap_of(dets, gts)
    np.testing.assert_allclose(recall, [0.5, 0.5])
    np.testing.assert_allclose(precision, [1.0, 0.5])
    assert ap == pytest.approx(6 / 11)


def test_overlap_ties_take_the_first_ground_truth():
    b = [3, 1, 12, 10]
    tied = [2, 1, 11, 10]  # IoU 90/110 with both A and b
    dets = [("i", 0.9, A), ("i", 0.8, tied)]
    # A listed first: the tie goes to A, already matched -> false positive
    ap_first, _, precision = ap_of(dets, {"i": [(A, False), (b, False)]})
    np.testing.assert_allclose(precision, [1.0, 0.5])
    # b listed first: the tie goes to b -> second true positive
    ap_second, _, precision = ap_of(dets, {"i": [(b, False), (A, False)]})
    np.testing.assert_allclose(precision, [1.0, 1.0])
    assert ap_first == pytest.approx(6 / 11) and ap_second == pytest.approx(1.0)


def test_overlap_of_exactly_one_half_is_a_match():
    # 10 x 5 inside 10 x 10: 50 / 100 = 0.5 exactly
    ap, _, _ = ap_of([("i", 0.9, [1, 1, 10, 5])], {"i": [(A, False)]})
    assert ap == pytest.approx(1.0)
    # one pixel row less: 40 / 100 -> miss
    ap, _, _ = ap_of([("i", 0.9, [1, 1, 10, 4])], {"i": [(A, False)]})
    assert ap == 0.0


def test_touching_boxes_do_not_overlap():
    # iw = 10 - 10 + 1 = 1 > 0 counts; the next pixel over gives iw = 0 and no overlap
    ap, _, _ = ap_of([("i", 0.9, [10, 1, 19, 10])], {"i": [(A, False)]})
    assert ap == 0.0  # 10 / 190


def test_equal_scores_keep_file_order():
    far = [50, 50, 60, 60]
    ap, _, _ = ap_of([("i", 0.5, A), ("i", 0.5, far)], {"i": [(A, False)]})
    assert ap == pytest.approx(1.0)
    # miss first: recall 0 then 1 at precision 1/2
    ap, _, _ = ap_of([("i", 0.5, far), ("i", 0.5, A)], {"i": [(A, False)]})
    assert ap == pytest.approx(0.5)


def test_detection_on_image_without_ground_truth_is_false_positive_and_empty_class_undefined():
    ap, recall, precision = ap_of([("j", 0.9, A), ("i", 0.8, A)], {"i": [(A, False)]})
    np.testing.assert_allclose(precision, [0.0, 0.5])
    assert ap == pytest.approx(0.5)
    ap, _, _ = ap_of([("i", 0.9, A)], {"i": [(A, True)]})
    assert ap is None


def devkit_loop(dets, gts, npos):
    """The devkit's per-detection loop, transcribed literally (the reference for random cases)."""
    order = sorted(range(len(dets)), key=lambda k: -dets[k][1])  # Python's sort is stable
    matched = {img: [False] * len(v) for img, v in gts.items()}
    tp, fp = [], []
    for k in order:
        img, _, bb = dets[k]
        ovmax, jmax = -np.inf, -1
        for j, (g, _) in enumerate(gts.get(img, [])):
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        t = f = 0
        if ovmax >= 0.5:
            if not gts[img][jmax][1]:
                if not matched[img][jmax]:
                    t, matched[img][jmax] = 1, True
                else:
                    f = 1
        else:
            f = 1
        tp.append(t)
        fp.append(f)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos
    with np.errstate(invalid="ignore"):
        precision = np.nan_to_num(tp / (tp + fp))
    return recall, precision


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorized_matches_literal_devkit_loop(seed):
    rng = np.random.default_rng(seed)
    gts, dets = {}, []
    for i in range(40):
        boxes = []
        for _ in range(rng.integers(0, 5)):
            x, y = rng.integers(1, 40, 2)
            boxes.append(([x, y, x + rng.integers(3, 15), y + rng.integers(3, 15)], bool(rng.random() < 0.2)))
        gts[f"im{i}"] = boxes
        for _ in range(rng.integers(0, 12)):
            if boxes and rng.random() < 0.6:
                g = np.array(boxes[rng.integers(len(boxes))][0])
                box = g + rng.integers(-3, 4, 4)  # integer jitter: overlap ties and exact 0.5s happen
            else:
                x, y = rng.integers(1, 40, 2)
                box = np.array([x, y, x + 8, y + 8])
            dets.append((f"im{i}", float(np.round(rng.random(), 1)), box.tolist()))  # tied scores
    npos = sum(not d for v in gts.values() for _, d in v)
    expected_recall, expected_precision = devkit_loop(dets, gts, npos)
    for metric, use07 in (("voc07", True), ("voc12", False)):
        ap, recall, precision = ap_of(dets, gts, metric)
        np.testing.assert_array_equal(recall, expected_recall)
        np.testing.assert_array_equal(precision, expected_precision)
        assert ap == voc_ap(expected_recall, expected_precision, use07)


# --- VOCEvaluator ----------------------------------------------------------------------------

def three_class_evaluator(metric="voc07"):
    ev = VOCEvaluator(["a", "b", "c"], metric)
    far = [50, 50, 60, 60]
    # class a: one gt, one hit -> AP 1; class b: one gt, a miss outscoring the hit -> AP 0.5;
    # class c: only a difficult gt -> undefined
    ev.add_image("x", [A, A, A], [1, 2, 3], [False, False, True],
                 [A, far, A, A], [0.9, 0.8, 0.7, 0.6], [1, 2, 2, 3])
    ev.add_image("y", np.zeros((0, 4)), [], [], [far], [0.5], [3])
    return ev


def test_evaluator_result_excludes_undefined_classes():
    result = three_class_evaluator().result()
    assert result["classes"] == pytest.approx({"a": 1.0, "b": 0.5, "c": None})
    assert result["classes"]["c"] is None
    assert result["mAP"] == pytest.approx(0.75)
    assert result["num_images"] == 2 and result["metric"] == "voc07"
    recall, precision = result["precision_recall"]["b"]
    np.testing.assert_allclose(recall, [0.0, 1.0])
    np.testing.assert_allclose(precision, [0.0, 0.5])
    table = format_table(result)
    assert "100.0" in table and "50.0" in table and "75.0" in table and "n/a" in table


def test_evaluator_rejects_bad_input():
    ev = VOCEvaluator(["a"])
    with pytest.raises(ValueError, match="outside 1..1"):
        ev.add_image("x", [A], [2], [False], [], [], [])
    ev.add_image("x", [A], [1], [False], [], [], [])
    with pytest.raises(ValueError, match="added twice"):
        ev.add_image("x", [A], [1], [False], [], [], [])
    with pytest.raises(ValueError, match="metric"):
        VOCEvaluator(["a"], metric="coco")


def test_add_batch_converts_normalized_boxes():
    height, width = 375, 500
    gt_voc = np.array([[48, 240, 195, 371], [8, 12, 352, 498]], dtype=np.float64)
    det_voc = np.array([[50, 238, 196, 370], [300, 10, 340, 60]], dtype=np.float64)
    reference = VOCEvaluator(["a", "b"])
    reference.add_image("img", gt_voc, [1, 2], [False, False], det_voc, [0.9, 0.3], [1, 2])
    batched = VOCEvaluator(["a", "b"])
    pad = np.zeros((1, 2, 4))
    batched.add_batch(
        [b"img"], np.array([[height, width]]),
        (np.concatenate([voc_to_normalized(det_voc, height, width)[None], pad], 1).astype(np.float32),
         np.array([[0.9, 0.3, 0.0, 0.0]], np.float32), np.array([[1, 2, 0, 0]]), np.array([2])),
        (np.concatenate([voc_to_normalized(gt_voc, height, width)[None], pad], 1).astype(np.float32),
         np.array([[1, 2, 0, 0]]), np.zeros((1, 4), bool), np.array([2])))
    assert batched.image_ids == ["img"]
    assert batched.result()["classes"] == pytest.approx(reference.result()["classes"])
    # snapped back to the annotation's integer pixels despite the float32 round trip
    np.testing.assert_array_equal(batched._gt[0][0], gt_voc)


# --- files and command line ------------------------------------------------------------------

def write_annotation(path, objects, size=(500, 375)):
    parts = [f"<annotation><filename>{path.stem}.jpg</filename><size><width>{size[0]}</width>"
             f"<height>{size[1]}</height><depth>3</depth></size>"]
    for name, box, difficult in objects:
        tag = "" if difficult is None else f"<difficult>{int(difficult)}</difficult>"
        parts.append(f"<object><name>{name}</name><pose>Left</pose>{tag}<bndbox><xmin>{box[0]}</xmin>"
                     f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>")
    path.write_text("".join(parts) + "</annotation>\n")


def make_tree(tmp_path):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    # difficult omitted on the first object (means 0), float coordinates on the second
    write_annotation(ann / "000001.xml", [("a", A, None), ("b", [21.0, 21.0, 30.0, 30.0], 0),
                                          ("dog", A, 0)])
    write_annotation(ann / "000002.xml", [("a", [5, 5, 20, 20], 1)])
    (tmp_path / "test.txt").write_text("000001\n000002\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "comp4_det_test_a.txt").write_text(
        "000002 0.95 5 5 20 20\n000001 0.9 1 1 10 10\n\n000001 0.8 1 1 10 10\n")
    (results / "comp4_det_test_b.txt").write_text("000001 0.4 50 50 60 60\n000001 0.3 21 21 30 30\n")
    return ann, tmp_path / "test.txt", results


def test_read_annotation_is_tolerant(tmp_path):
    ann, _, _ = make_tree(tmp_path)
    boxes, labels, difficult = read_annotation(ann / "000001.xml", ["a", "b"])
    np.testing.assert_array_equal(boxes, [A, [21, 21, 30, 30]])
    np.testing.assert_array_equal(labels, [1, 2])
    np.testing.assert_array_equal(difficult, [False, False])


def test_evaluate_files_hand_case(tmp_path):
    ann, imageset, results = make_tree(tmp_path)
    result = evaluate_files(ann, imageset, results, "voc07", ["a", "b", "c"])
    # a: difficult hit ignored, TP, duplicate -> AP 1; b: miss then TP -> 0.5; c: no gt, no file
    assert result["classes"] == pytest.approx({"a": 1.0, "b": 0.5, "c": None})
    assert result["mAP"] == pytest.approx(0.75)


def test_result_file_errors_name_file_and_line(tmp_path):
    ann, imageset, results = make_tree(tmp_path)
    (results / "comp4_det_test_b.txt").write_text("000001 0.4 50 50 60 60\n000001 0.3 21 21 30\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_b.txt:2:"):
        evaluate_files(ann, imageset, results, "voc07", ["a", "b"])
    with pytest.raises(ValueError, match=r":1:"):
        (results / "x.txt").write_text("000001 nan 1 1 2 2\n")
        read_result_file(results / "x.txt")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ssd.voc.eval", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_end_to_end(tmp_path):
    ann, imageset, results = make_tree(tmp_path)
    out = tmp_path / "map.json"
    common = ["--annotations_dir", str(ann), "--imageset", str(imageset), "--classes", "a,b,c"]
    proc = run_cli(*common, "--results_dir", str(results), "--output_json", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    # the devkit sums p / 11 eleven times, so 1.0 comes out as 1.0000000000000002: hence approx
    assert summary["metric"] == "voc07" and summary["classes"]["c"] is None
    assert summary["classes"] == pytest.approx({"a": 1.0, "b": 0.5, "c": None})
    assert summary["mAP"] == pytest.approx(0.75)
    assert "mAP" in proc.stdout and "75.0" in proc.stdout
    assert "comp4_det_test_c.txt" in proc.stderr  # the missing class file is reported

    (results / "comp4_det_test_c.txt").write_text("000007 0.5 1 1 5 5\n000009 0.5 1 1 5 5\n000007 0.1 1 1 5 5\n")
    proc = run_cli(*common, "--results_dir", str(results))
    assert proc.returncode != 0
    assert "3 detections" in proc.stderr and "2 image ids" in proc.stderr
    assert "000007" in proc.stderr and "000009" in proc.stderr


def test_write_results_then_rescoring_reproduces_map(tmp_path):
    rng = np.random.default_rng(5)
    names = ["a", "b", "c"]
    ev = VOCEvaluator(names)
    ann = tmp_path / "Annotations"
    ann.mkdir()
    ids = []
    for i in range(30):
        height, width = int(rng.integers(100, 300)), int(rng.integers(100, 300))
        n = int(rng.integers(1, 4))
        xy = rng.integers(1, 60, (n, 2))
        gt = np.concatenate([xy, xy + rng.integers(10, 40, (n, 2))], axis=1).astype(float)
        labels = rng.integers(1, 4, n)
        difficult = rng.random(n) < 0.2
        k = 30
        jitter = gt[rng.integers(0, n, k)] + rng.normal(0, 3, (k, 4))
        dets = np.clip(voc_to_normalized(jitter, height, width), 0, 1).astype(np.float32)
        scores = np.round(rng.random(k), 2).astype(np.float32)  # ties across images
        image_id = f"{i:06d}"
        ids.append(image_id)
        ev.add_batch([image_id], [[height, width]],
                     (dets[None], scores[None], rng.integers(1, 4, (1, k)), [k]),
                     (voc_to_normalized(gt, height, width)[None].astype(np.float32), labels[None],
                      difficult[None], [n]))
        write_annotation(ann / f"{image_id}.xml",
                         [(names[c - 1], b.astype(int).tolist(), d) for b, c, d in zip(gt, labels, difficult)],
                         size=(width, height))
    (tmp_path / "test.txt").write_text("\n".join(ids) + "\n")
    ev.write_results(tmp_path / "results")
    in_process = ev.result()
    rescored = evaluate_files(ann, tmp_path / "test.txt", tmp_path / "results", "voc07", names)
    assert rescored["classes"] == in_process["classes"]
    assert rescored["mAP"] == in_process["mAP"]
    assert 0 < in_process["mAP"] < 1
