"""Times the VOC metric on a VOC07-test-sized synthetic case.

4,952 images, about 2.5 objects each (some difficult), 200 detections per image over 20 classes:
jittered copies of the ground truth (hits, duplicates, near misses) plus random boxes. Prints the
seconds spent adding the images and scoring them; with --files, also the seconds the file scorer
(`python -m ssd.voc.eval`) takes to read the same case back from VOC XML and result files.

    python bench/voc_eval.py [--images 4952] [--detections 200] [--seed 0] [--metric voc07] [--files]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ssd import cpu
from ssd.config.loading import VOC_CLASSES
from ssd.voc.eval import evaluate_files
from ssd.voc.metric import VOCEvaluator
from ssd.voc.table import format_table


def random_boxes(rng: np.random.Generator, n: int, width: float, height: float) -> np.ndarray:
    w = rng.uniform(10, width * 0.8, n)
    h = rng.uniform(10, height * 0.8, n)
    x = rng.uniform(1, width - w)
    y = rng.uniform(1, height - h)
    return np.round(np.stack([x, y, x + w, y + h], axis=1))


def synthetic_images(rng: np.random.Generator, num_images: int, dets_per_image: int, num_classes: int):
    for i in range(num_images):
        width, height = rng.integers(300, 500, endpoint=True), rng.integers(300, 500, endpoint=True)
        num_gt = max(1, rng.poisson(2.5))
        gt_boxes = random_boxes(rng, num_gt, width, height)
        gt_labels = rng.integers(1, num_classes, num_gt, endpoint=True)
        gt_difficult = rng.random(num_gt) < 0.1
        # about a quarter of the detections are jittered ground truth, the rest are random
        num_near = dets_per_image // 4
        source = rng.integers(0, num_gt, num_near)
        sizes = np.tile(gt_boxes[source, 2:] - gt_boxes[source, :2], 2)
        near = gt_boxes[source] + rng.normal(0, 0.15, (num_near, 4)) * sizes
        near_labels = np.where(rng.random(num_near) < 0.8, gt_labels[source],
                               rng.integers(1, num_classes, num_near, endpoint=True))
        far = random_boxes(rng, dets_per_image - num_near, width, height)
        det_boxes = np.concatenate([near, far])
        det_classes = np.concatenate([near_labels, rng.integers(1, num_classes, len(far), endpoint=True)])
        det_scores = np.concatenate([rng.uniform(0.2, 1.0, num_near), rng.uniform(0.01, 0.6, len(far))])
        yield f"{i:06d}", gt_boxes, gt_labels, gt_difficult, det_boxes, det_scores.astype(np.float32), det_classes


def write_annotations(directory: Path, images) -> None:
    for image_id, gt_boxes, gt_labels, gt_difficult, *_ in images:
        objects = "".join(
            f"<object><name>{VOC_CLASSES[label - 1]}</name><difficult>{int(difficult)}</difficult><bndbox>"
            f"<xmin>{x0:g}</xmin><ymin>{y0:g}</ymin><xmax>{x1:g}</xmax><ymax>{y1:g}</ymax></bndbox></object>"
            for (x0, y0, x1, y1), label, difficult in zip(gt_boxes, gt_labels, gt_difficult))
        (directory / f"{image_id}.xml").write_text(f"<annotation>{objects}</annotation>")


def time_files(evaluator: VOCEvaluator, images, metric: str, in_process: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "Annotations").mkdir()
        write_annotations(tmp / "Annotations", images)
        (tmp / "test.txt").write_text("".join(f"{image[0]}\n" for image in images))
        start = time.perf_counter()
        evaluator.write_results(tmp / "results")
        written = time.perf_counter()
        result = evaluate_files(tmp / "Annotations", tmp / "test.txt", tmp / "results", metric, VOC_CLASSES)
        done = time.perf_counter()
    same = result["classes"] == in_process["classes"]
    print(f"write_results: {written - start:.2f} s, evaluate_files (XML + result files): {done - written:.2f} s, "
          f"same APs as in process: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4952)
    parser.add_argument("--detections", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metric", default="voc07", choices=["voc07", "voc12"])
    parser.add_argument("--files", action="store_true", help="also time the file scorer")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    images = list(synthetic_images(rng, args.images, args.detections, len(VOC_CLASSES)))
    evaluator = VOCEvaluator(VOC_CLASSES, args.metric)
    start = time.perf_counter()
    for image in images:
        evaluator.add_image(*image)
    added = time.perf_counter()
    result = evaluator.result()
    done = time.perf_counter()
    print(format_table(result))
    print(cpu.describe_cpu())
    print(f"images: {args.images}, detections: {args.images * args.detections}")
    print(f"add_image: {added - start:.2f} s, result: {done - added:.2f} s, total: {done - start:.2f} s")
    if args.files:
        time_files(evaluator, images, args.metric, result)


if __name__ == "__main__":
    main()
