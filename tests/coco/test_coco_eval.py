import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd.coco.coords import coco_to_normalized, normalized_to_coco
from ssd.coco.eval import evaluate_files
from ssd.coco.metric import STAT_KEYS, COCOEvaluator, evaluate_coco, format_stats, format_table
from ssd.coco.results import BBOX_DECIMALS, SCORE_DECIMALS

REPO = Path(__file__).resolve().parents[2]
# COCOeval's 101 recall thresholds are 0, 0.01, ..., 1; precision is tp / (tp + fp + eps)
RECALL_THRESHOLDS = 101


def thresholds_up_to(recall):
    """How many of the recall thresholds 0, 0.01, ..., 1 are <= recall (recall not on a threshold)."""
    return int(np.floor(recall * 100)) + 1


def norm(box_xywh, height, width):
    """Pixel [x, y, w, h] -> normalized [ymin, xmin, ymax, xmax], written out by hand."""
    x, y, w, h = box_xywh
    return [y / height, x / width, (y + h) / height, (x + w) / width]


def add_image(ev, image_id, height, width, gts, dets, is_crowd=None, areas=None):
    """gts: [(xywh, label, difficult)], dets: [(xywh, label, score)] in pixels; one padded batch."""
    m, k = max(len(gts), 1) + 1, max(len(dets), 1) + 2  # padding rows on purpose
    gt_boxes, gt_labels, gt_difficult = np.zeros((1, m, 4), np.float32), np.zeros((1, m), np.int32), np.zeros((1, m), bool)
    for i, (box, label, difficult) in enumerate(gts):
        gt_boxes[0, i], gt_labels[0, i], gt_difficult[0, i] = norm(box, height, width), label, difficult
    det_boxes, det_scores, det_classes = np.zeros((1, k, 4), np.float32), np.zeros((1, k), np.float32), np.ones((1, k), np.int32)
    for i, (box, label, score) in enumerate(dets):
        det_boxes[0, i], det_classes[0, i], det_scores[0, i] = norm(box, height, width), label, score
    crowd = None if is_crowd is None else np.array([list(is_crowd) + [False] * (m - len(is_crowd))])
    area = None if areas is None else np.array([list(areas) + [0.0] * (m - len(areas))])
    ev.add_batch([image_id], [[height, width]], (det_boxes, det_scores, det_classes, [len(dets)]),
                 (gt_boxes, gt_labels, gt_difficult, [len(gts)]), is_crowd=crowd, areas=area)


def pycocotools_direct(tmp_path, gt_dataset, results):
    """The 12 numbers (-1 kept) and per-category AP@[.5:.95] from files, pycocotools alone."""
    gt_file, dt_file = tmp_path / "gt_direct.json", tmp_path / "dt_direct.json"
    gt_file.write_text(json.dumps(gt_dataset))
    dt_file.write_text(json.dumps(results) if isinstance(results, list) else Path(results).read_text())
    gt = COCO(str(gt_file))
    evaluation = COCOeval(gt, gt.loadRes(str(dt_file)), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    per_class = {}
    for k, cid in enumerate(evaluation.params.catIds):
        p = evaluation.eval["precision"][:, :, k, 0, 2]
        per_class[cid] = float(p[p > -1].mean()) if (p > -1).any() else None
    return evaluation.stats, per_class


def assert_same_stats(result, stats):
    for key, value in zip(STAT_KEYS, stats):
        if value == -1:
            assert result[key] is None, key
        else:
            assert result[key] == pytest.approx(value, abs=1e-12), key


# --- coordinates -----------------------------------------------------------------------------

def test_coco_coords_round_trip_and_whole_image():
    assert normalized_to_coco([[0, 0, 1, 1]], 480, 640).tolist() == [[0, 0, 640, 480]]
    boxes = np.array([[10.5, 20.25, 30, 40], [0, 0, 5, 7]])
    normalized = coco_to_normalized(boxes, 200, 100)
    assert normalized[0] == pytest.approx([20.25 / 200, 10.5 / 100, 60.25 / 200, 40.5 / 100])
    assert normalized_to_coco(normalized, 200, 100) == pytest.approx(boxes)


# --- hand cases ------------------------------------------------------------------------------

def test_one_perfect_detection_is_ap_1_at_every_iou():
    ev = COCOEvaluator(["a"])
    add_image(ev, "img", 200, 300, [([30, 40, 100, 60], 1, False)], [([30, 40, 100, 60], 1, 0.9)])
    r = ev.result()
    for key in ("AP", "AP50", "AP75", "APm", "AR1", "AR100", "mAP"):
        assert r[key] == pytest.approx(1.0, abs=1e-12), key
    assert r["APs"] is None and r["APl"] is None  # one medium object: no small or large ground truth
    assert r["classes"]["a"] == pytest.approx(1.0) and r["status"] == {"a": "ok"}
    assert r["metric"] == "coco" and r["num_images"] == 1


def test_iou_between_thresholds_is_true_positive_below_and_false_positive_above():
    # IoU = 100 x 72 / (100 x 100) = 0.72: matched at 0.50, 0.55, 0.60, 0.65, 0.70, not at 0.75 .. 0.95
    ev = COCOEvaluator(["a"])
    add_image(ev, "img", 200, 200, [([50, 50, 100, 100], 1, False)], [([50, 50, 100, 72], 1, 0.8)])
    r = ev.result()
    assert r["AP"] == pytest.approx(5 / 10, abs=1e-12)
    assert r["AP50"] == pytest.approx(1.0, abs=1e-12) and r["AP75"] == 0.0
    assert r["AR100"] == pytest.approx(5 / 10)
    assert r["classes_AP50"]["a"] == pytest.approx(1.0)


def test_duplicate_detection_is_a_false_positive():
    # 3 objects; scores 0.9 (object 1), 0.8 (object 1 again), 0.7 (object 2), 0.6 (object 3):
    # precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1 -> envelope 1 up to recall 1/3, then 3/4
    boxes = [[10, 10, 50, 50], [100, 10, 50, 50], [10, 100, 50, 50]]
    ev = COCOEvaluator(["a"])
    add_image(ev, "img", 300, 300, [(b, 1, False) for b in boxes],
              [(boxes[0], 1, 0.9), (boxes[0], 1, 0.8), (boxes[1], 1, 0.7), (boxes[2], 1, 0.6)])
    low = thresholds_up_to(1 / 3)  # 34
    expected = (low * 1.0 + (RECALL_THRESHOLDS - low) * 0.75) / RECALL_THRESHOLDS
    r = ev.result()
    assert r["AP"] == pytest.approx(expected, abs=1e-12) and r["AP50"] == pytest.approx(expected, abs=1e-12)
    assert r["AR100"] == pytest.approx(1.0)
    assert r["num_detections"] == {"a": 4}


def test_class_without_ground_truth_is_none_and_left_out_of_the_mean():
    ev = COCOEvaluator(["a", "b", "c"])
    add_image(ev, "img", 300, 300, [([10, 10, 60, 60], 1, False), ([100, 100, 60, 60], 3, False)],
              [([10, 10, 60, 60], 1, 0.9), ([200, 200, 50, 50], 2, 0.95)])
    r = ev.result()
    assert r["classes"] == {"a": pytest.approx(1.0), "b": None, "c": 0.0}
    assert r["classes_AP50"]["b"] is None
    assert r["status"] == {"a": "ok", "b": "no_ground_truth", "c": "no_detections"}
    # the mean over a and c only, and it is COCOeval's AP
    assert r["AP"] == pytest.approx(0.5, abs=1e-12) and r["mAP"] == r["AP"]
    table = format_table(r)
    assert "no ground truth" in table and "no detections" in table and "left out of the means" in table
    assert json.loads(json.dumps(r))["classes"]["b"] is None  # null in JSON, not NaN


@pytest.mark.parametrize("flag", ["is_crowd", "difficult"])
def test_crowd_and_difficult_ground_truth_are_ignored(flag):
    person, crowd_box = [20, 20, 40, 80], [150, 20, 120, 100]
    # two detections on the crowd region, both scored above the real object's detection; the second
    # lies inside it (IoU 0.25, a false positive for VOC; overlap with a crowd region is over the
    # detection's own area: 1)
    dets = [(crowd_box, 1, 0.95), ([160, 30, 50, 60], 1, 0.9), (person, 1, 0.8)]
    ev = COCOEvaluator(["person"])
    gts = [(person, 1, False), (crowd_box, 1, flag == "difficult")]
    add_image(ev, "img", 200, 300, gts, dets, is_crowd=[False, True] if flag == "is_crowd" else None)
    r = ev.result()
    assert r["AP"] == pytest.approx(1.0, abs=1e-12)
    assert r["num_positives"] == {"person": 1} and r["num_crowd"] == {"person": 1}
    # without the ignored region the same detections are two false positives ahead of the true one
    bare = COCOEvaluator(["person"])
    add_image(bare, "img", 200, 300, gts[:1], dets)
    assert bare.result()["AP"] == pytest.approx(1 / 3, abs=1e-12)


def test_a_class_with_only_crowd_ground_truth_has_no_ap():
    ev = COCOEvaluator(["a", "b"])
    add_image(ev, "img", 100, 100, [([10, 10, 30, 30], 1, False), ([50, 50, 30, 30], 2, True)],
              [([10, 10, 30, 30], 1, 0.9), ([50, 50, 30, 30], 2, 0.9)])
    r = ev.result()
    assert r["classes"]["b"] is None and r["status"]["b"] == "no_ground_truth"
    assert r["AP"] == pytest.approx(1.0)


def test_small_medium_large_split_by_area():
    # areas 20^2 < 32^2 (small), 50^2 (medium), 200^2 > 96^2 (large); the medium one is missed
    small, medium, large = [10, 10, 20, 20], [100, 100, 50, 50], [300, 200, 200, 200]
    gts = [(small, 1, False), (medium, 1, False), (large, 1, False)]
    dets = [(small, 1, 0.9), (large, 1, 0.8)]
    ev = COCOEvaluator(["a"])
    add_image(ev, "img", 480, 640, gts, dets)
    r = ev.result()
    assert (r["APs"], r["APm"], r["APl"]) == (pytest.approx(1.0), 0.0, pytest.approx(1.0))
    assert (r["ARs"], r["ARm"], r["ARl"]) == (pytest.approx(1.0), 0.0, pytest.approx(1.0))
    assert r["AP"] == pytest.approx(thresholds_up_to(2 / 3) / RECALL_THRESHOLDS, abs=1e-12)
    # given areas (COCO's segmentation areas) decide instead of the boxes: the large box counts as small
    ev = COCOEvaluator(["a"])
    add_image(ev, "img", 480, 640, gts, dets, areas=[400.0, 2500.0, 400.0])
    r = ev.result()
    assert (r["APs"], r["APm"], r["APl"]) == (pytest.approx(1.0), 0.0, None)


def test_empty_detections_score_zero_not_crash():
    ev = COCOEvaluator(["a", "b"])
    add_image(ev, "img", 100, 100, [([10, 10, 30, 30], 1, False)], [])
    r = ev.result()
    assert r["AP"] == 0.0 and r["AR100"] == 0.0 and r["classes"] == {"a": 0.0, "b": None}
    assert r["status"]["a"] == "no_detections"
    assert evaluate_coco(ev.ground_truth_dataset(), [])["AP"] == 0.0


def test_evaluator_refuses_bad_input():
    ev = COCOEvaluator(["a"])
    add_image(ev, "5", 100, 100, [], [])
    with pytest.raises(ValueError, match="added twice"):
        add_image(ev, "5", 100, 100, [], [])
    with pytest.raises(ValueError, match=r"detection classes \[2\] outside 1..1"):
        add_image(ev, "6", 100, 100, [], [([1, 1, 5, 5], 2, 0.5)])
    coco = COCOEvaluator(["a"], [7])
    with pytest.raises(ValueError, match="'2008_000001' is not a COCO image id"):
        add_image(coco, "2008_000001", 100, 100, [], [])
    add_image(coco, "5", 100, 100, [], [])
    with pytest.raises(ValueError, match="COCO image id 5 added twice"):
        add_image(coco, "005", 100, 100, [], [])
    with pytest.raises(ValueError, match="one distinct id per class"):
        COCOEvaluator(["a", "b"], [3, 3])
    with pytest.raises(ValueError, match="no images"):
        COCOEvaluator(["a"]).result()


# --- results JSON round trip on COCO data ----------------------------------------------------

def test_results_json_round_trip_with_sparse_ids_and_image_sizes(tmp_path):
    names, category_ids = ["person", "backpack", "toothbrush"], [1, 27, 90]
    # COCO image id -> (height, width, ground truth [(xywh, label)], detections [(xywh, label, score)])
    images = {
        42: (480, 640, [([100, 50, 200, 300], 1), ([400, 300, 60, 40], 3)],
             [([104, 48, 200, 300], 1, 0.91), ([400, 300, 60, 40], 3, 0.83), ([0, 0, 30, 30], 2, 0.7)]),
        7: (300, 500, [([20, 30, 100, 150], 2), ([300, 100, 150, 180], 1)],
            [([20, 30, 100, 120], 2, 0.88), ([300, 100, 150, 180], 1, 0.42), ([310, 110, 140, 170], 1, 0.6)]),
        139: (1000, 200, [([10, 600, 150, 300], 3)],
              [([10, 620, 150, 300], 3, 0.77), ([50, 50, 100, 100], 3, 0.81)]),
    }
    ev = COCOEvaluator(names, category_ids)
    for image_id, (height, width, gts, dets) in images.items():
        add_image(ev, str(image_id).encode(), height, width, [(b, c, False) for b, c in gts], dets)
    written = ev.write_results(tmp_path / "dets.json")
    hand_gt = {
        "images": [{"id": i, "height": h, "width": w} for i, (h, w, _, _) in images.items()],
        "categories": [{"id": c, "name": n} for c, n in zip(category_ids, names)],
        "annotations": [{"id": n, "image_id": i, "category_id": category_ids[label - 1], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0}
                        for n, (i, box, label) in enumerate(
                            ((i, b, c) for i, (_, _, gts, _) in images.items() for b, c in gts), start=1)],
    }
    stats, per_category = pycocotools_direct(tmp_path, hand_gt, written)
    r = ev.result()
    assert_same_stats(r, stats)
    assert r["classes"] == {n: pytest.approx(per_category[c], abs=1e-12) for n, c in zip(names, category_ids)}
    assert r["category_ids"] == dict(zip(names, category_ids))
    assert 0.3 < r["AP"] < 0.95  # a case with something to get wrong
    # the file itself: COCO ids, original-image pixels, xywh, rounded as documented
    entries = json.loads(written.read_text())
    first = entries[0]
    assert first == {"image_id": 42, "category_id": 1, "bbox": pytest.approx([104, 48, 200, 300], abs=0.01),
                     "score": pytest.approx(0.91, abs=1e-5)}
    assert [e["category_id"] for e in entries] == [1, 90, 27, 27, 1, 1, 90, 90]
    assert [e["image_id"] for e in entries] == [42, 42, 42, 7, 7, 7, 139, 139]
    assert entries[6]["bbox"] == pytest.approx([10, 620, 150, 300], abs=0.01)
    for e in entries:
        assert all(v == round(v, BBOX_DECIMALS) for v in e["bbox"]) and e["score"] == round(e["score"], SCORE_DECIMALS)
    # the scorer reads the same files to the same numbers
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(hand_gt))
    assert evaluate_files(gt_file, written) == r


def test_ground_truth_json_written_by_the_evaluator_rescores_to_the_same_numbers(tmp_path):
    rng = np.random.default_rng(3)
    ev = COCOEvaluator(["a", "b", "c"])
    for i in range(12):
        height, width = int(rng.integers(100, 400)), int(rng.integers(100, 400))
        n = int(rng.integers(1, 5))
        xy = rng.uniform(0, 50, (n, 2))
        gt = np.concatenate([xy, rng.uniform(5, 50, (n, 2))], axis=1)
        labels = rng.integers(1, 4, n)
        picks = rng.integers(0, n, 10)
        dets = gt[picks] + rng.normal(0, 3, (10, 4)) * [1, 1, 0.3, 0.3]
        add_image(ev, f"{i:06d}", height, width, [(b.tolist(), c, d) for b, c, d in zip(gt, labels, rng.random(n) < 0.2)],
                  [(b.tolist(), int(c), float(s)) for b, c, s in zip(dets, labels[picks], rng.random(10))])
    r = ev.result()
    assert 0 < r["AP"] < 1
    assert evaluate_files(ev.write_ground_truth(tmp_path / "gt.json"), ev.write_results(tmp_path / "dt.json")) == r


# --- the VOC-format path ---------------------------------------------------------------------

def test_voc_format_batches_against_a_hand_built_coco_ground_truth(tmp_path):
    names = ["cat", "dog"]
    # two padded batches of string ids; difficult objects; (height, width) differ per image
    batches = [
        [("000005", 375, 500, [([48, 240, 147, 131], 2, False), ([8, 12, 344, 480], 1, True)],
          [([50, 238, 150, 130], 2, 0.9), ([10, 10, 340, 470], 1, 0.8), ([300, 20, 100, 100], 2, 0.3)]),
         ("000007", 333, 500, [([140, 49, 360, 281], 1, False)],
          [([140, 49, 300, 281], 1, 0.7), ([141, 50, 358, 280], 1, 0.65)])],
        [("2008_000001", 442, 500, [([200, 100, 100, 150], 1, False), ([10, 10, 40, 60], 2, True),
                                    ([300, 200, 150, 200], 2, False)],
          [([205, 105, 100, 150], 1, 0.95), ([12, 12, 38, 58], 2, 0.85), ([400, 300, 40, 40], 2, 0.5)])],
    ]
    ev = COCOEvaluator(names)
    for batch in batches:
        b, m, k = len(batch), 3, 4
        gt_boxes, gt_labels, gt_difficult = np.zeros((b, m, 4), np.float32), np.zeros((b, m), np.int32), np.zeros((b, m), bool)
        det_boxes, det_scores, det_classes = np.zeros((b, k, 4), np.float32), np.zeros((b, k), np.float32), np.zeros((b, k), np.int32)
        for i, (_, h, w, gts, dets) in enumerate(batch):
            for j, (box, label, difficult) in enumerate(gts):
                gt_boxes[i, j], gt_labels[i, j], gt_difficult[i, j] = norm(box, h, w), label, difficult
            for j, (box, label, score) in enumerate(dets):
                det_boxes[i, j], det_classes[i, j], det_scores[i, j] = norm(box, h, w), label, score
        ev.add_batch([x[0].encode() for x in batch], [[x[1], x[2]] for x in batch],
                     (det_boxes, det_scores, det_classes, [len(x[4]) for x in batch]),
                     (gt_boxes, gt_labels, gt_difficult, [len(x[3]) for x in batch]))
    images = [x for batch in batches for x in batch]
    assert ev.coco_image_ids == {"000005": 1, "000007": 2, "2008_000001": 3}
    hand_gt = {"images": [{"id": n, "height": h, "width": w} for n, (_, h, w, _, _) in enumerate(images, start=1)],
               "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
               "annotations": []}
    hand_results = []
    for n, (_, _, _, gts, dets) in enumerate(images, start=1):
        for box, label, difficult in gts:
            hand_gt["annotations"].append({"id": len(hand_gt["annotations"]) + 1, "image_id": n, "category_id": label,
                                           "bbox": box, "area": box[2] * box[3], "iscrowd": int(difficult)})
        hand_results += [{"image_id": n, "category_id": label, "bbox": box, "score": score}
                         for box, label, score in dets]
    stats, per_category = pycocotools_direct(tmp_path, hand_gt, hand_results)
    r = ev.result()
    assert_same_stats(r, stats)
    assert r["classes"] == {"cat": pytest.approx(per_category[1], abs=1e-12),
                            "dog": pytest.approx(per_category[2], abs=1e-12)}
    assert r["num_positives"] == {"cat": 2, "dog": 2} and r["num_crowd"] == {"cat": 1, "dog": 1}
    assert r["num_images"] == 3 and 0.2 < r["AP"] < 0.9
    assert [i["file_name"] for i in ev.ground_truth_dataset()["images"]] == ["000005", "000007", "2008_000001"]


# --- the command line ------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ssd.coco.eval", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def scored_files(tmp_path):
    ev = COCOEvaluator(["cat", "dog", "bird"], [17, 18, 16])
    add_image(ev, "42", 200, 300, [([10, 10, 100, 100], 1, False), ([150, 50, 100, 100], 2, False)],
              [([10, 10, 100, 100], 1, 0.9), ([150, 50, 100, 72], 2, 0.8)])
    return ev, ev.write_ground_truth(tmp_path / "gt.json"), ev.write_results(tmp_path / "dt.json")


def test_cli_prints_the_numbers_and_writes_the_summary(tmp_path, scored_files):
    ev, gt, dt = scored_files
    out = tmp_path / "summary.json"
    proc = run_cli(f"--annotations_file={gt}", f"--results_file={dt}", f"--output_json={out}")
    assert proc.returncode == 0, proc.stderr
    assert " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.750" in proc.stdout
    assert " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 0.750" in proc.stdout
    assert "Running per image evaluation" not in proc.stdout  # pycocotools' chatter stays quiet
    assert "bird" in proc.stdout and "no ground truth" in proc.stdout
    summary = json.loads(out.read_text())
    assert set(STAT_KEYS) <= set(summary) and summary["metric"] == "coco"
    assert summary["classes"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(0.5), "bird": None}
    assert summary == json.loads(json.dumps(ev.result()))
    assert format_stats(summary).splitlines()[0] in proc.stdout


def test_cli_errors_are_clear(tmp_path, scored_files):
    _, gt, dt = scored_files

    def fails(*args, expect):
        proc = run_cli(*args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "python -m ssd.coco.eval: error:" in proc.stderr
        for text in expect:
            assert text in proc.stderr, proc.stderr

    fails(f"--annotations_file={tmp_path / 'no.json'}", f"--results_file={dt}", expect=["annotations file not found", "no.json"])
    fails(f"--annotations_file={gt}", f"--results_file={tmp_path / 'none.json'}", expect=["results file not found"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"image_id": 42}))
    fails(f"--annotations_file={gt}", f"--results_file={bad}", expect=["bad.json", "JSON list", "got a JSON dict"])
    bad.write_text("[{\"image_id\": 42,")
    fails(f"--annotations_file={gt}", f"--results_file={bad}", expect=["bad.json: not a JSON file"])
    entry = {"image_id": 42, "category_id": 17, "bbox": [1, 1, 5, 5], "score": 0.5}
    bad.write_text(json.dumps([entry, {**entry, "bbox": [1, 1, 5]}]))
    fails(f"--annotations_file={gt}", f"--results_file={bad}", expect=["detection 1", "bbox"])
    bad.write_text(json.dumps([entry, {**entry, "image_id": 5}, {**entry, "image_id": 6}, {**entry, "image_id": 5}]))
    fails(f"--annotations_file={gt}", f"--results_file={bad}", expect=["3 detections", "2 image ids", "5, 6", "gt.json"])
    bad.write_text(json.dumps([entry, {**entry, "category_id": 1}]))
    fails(f"--annotations_file={gt}", f"--results_file={bad}", expect=["1 detections", "1 category ids", "e.g. 1"])
    fails(f"--annotations_file={bad}", f"--results_file={dt}", expect=["a COCO annotations file is a JSON object"])
    assert run_cli("--annotations_file=x").returncode != 0  # a required flag missing


def test_cli_empty_results_score_zero(tmp_path, scored_files):
    _, gt, _ = scored_files
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    out = tmp_path / "summary.json"
    proc = run_cli(f"--annotations_file={gt}", f"--results_file={empty}", f"--output_json={out}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["AP"] == 0.0 and summary["AR100"] == 0.0
    assert summary["classes"] == {"cat": 0.0, "dog": 0.0, "bird": None}
    assert "no detections" in proc.stderr


def test_cli_help_exits_0():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "--annotations_file" in proc.stdout and "--results_file" in proc.stdout


def test_evaluate_coco_refuses_unknown_ids_and_the_scorer_malformed_annotations(tmp_path):
    dataset = {"images": [{"id": 1, "height": 10, "width": 10}], "categories": [{"id": 3, "name": "a"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}]}
    entry = {"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.5}
    assert evaluate_coco(dataset, [entry])["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="1 detections in the results name 1 category ids .* e.g. 4"):
        evaluate_coco(dataset, [entry, {**entry, "category_id": 4}])
    results = tmp_path / "dt.json"
    results.write_text(json.dumps([entry]))
    annotations = tmp_path / "gt.json"
    # id, iscrowd and area may be left out (filled in); an unknown image is refused
    del dataset["annotations"][0]["id"], dataset["annotations"][0]["area"], dataset["annotations"][0]["iscrowd"]
    annotations.write_text(json.dumps(dataset))
    assert evaluate_files(annotations, results)["AP"] == pytest.approx(1.0)
    dataset["annotations"].append({"image_id": 9, "category_id": 3, "bbox": [1, 1, 5, 5]})
    annotations.write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match=r"1 annotations in .*gt.json name 1 image ids .* e.g. 9"):
        evaluate_files(annotations, results)
    dataset["annotations"][1]["bbox"] = [1, 1, 5]
    annotations.write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match=r"gt.json: annotation 1 has no bbox"):
        evaluate_files(annotations, results)
