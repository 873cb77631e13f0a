r"""Draws a trained SSD's detections on images, at their original resolution.

  python visualize.py --images=photos/,extra.jpg --model_dir=runs/ssd300 --output_dir=drawn \
      [--checkpoint_path=runs/ssd300/ckpt-120000] [--score_threshold=0.5] \
      [--annotations_dir=VOC2007/Annotations]
  python visualize.py --images=photos/ --saved_model=exported/ssd300 --output_dir=drawn

--images takes files, folders (their .jpg/.jpeg/.png files) and globs, comma-separated; any size,
grayscale and RGBA too. The detector is model_dir's config and latest checkpoint (or
--checkpoint_path), or an exported SavedModel (--saved_model, its uint8 signature with
--score_threshold as its score_threshold input). Each image is written to --output_dir under its
own name with the boxes scoring at least --score_threshold drawn with class names and scores.
With --annotations_dir, the VOC XML of the same stem is drawn beside the detections (detections
left, ground truth right); objects of classes the model does not know are counted and reported
(a warning per name, and in the final line). Unreadable images are skipped, counted and logged.

Pictures are shown as a person sees them: a photo's EXIF orientation is applied, and the detector
runs on those upright pixels. With an annotation, its <size> decides the pixel grid as the
converters decide it (ssd.data.orientation.orient_for_annotation): the upright picture when <size> is
the upright size, the stored one when it is the stored size, and --exif=auto|apply|ignore when
it cannot tell (auto keeps the stored grid and warns, like the converters).
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python visualize.py` from anywhere: make `ssd` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssd import cli  # first: keeps TensorFlow's start-up lines quiet, whoever imports it

cli.quiet_tensorflow_startup()

import numpy as np
from absl import app, flags, logging
from PIL import Image, UnidentifiedImageError

from ssd.errors import UserError

FLAGS = flags.FLAGS

flags.DEFINE_list("images", None, "Image files, folders and globs (comma-separated).")
flags.DEFINE_string("model_dir", None, "Training directory: config.json and checkpoints.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix or a directory (its latest); "
                    "default: the latest in --model_dir.")
flags.DEFINE_string("saved_model", None, "An exported SavedModel (instead of --model_dir).")
flags.DEFINE_string("output_dir", None, "Where the drawn images go.")
flags.DEFINE_float("score_threshold", 0.5, "Draw detections scoring at least this.")
flags.DEFINE_string("annotations_dir", None, "VOC XML annotations (<image stem>.xml): draw the "
                    "ground truth beside the detections.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Inference precision (with "
                  "--model_dir).")
flags.DEFINE_enum("exif", "auto", ["auto", "apply", "ignore"],
                  "With --annotations_dir, photos with an EXIF orientation tag whose <size> cannot "
                  "tell which pixel grid the boxes refer to: auto keeps the stored grid and warns, "
                  "apply turns them upright, ignore keeps the stored grid (the converters' rule). "
                  "Images drawn without an annotation are always shown upright.")
flags.DEFINE_integer("batch_size", None, "Images per inference call (with --model_dir); default "
                     "eval.batch_size.")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MAX_LISTED_SKIPS = 10


class UsageError(UserError):
    """A problem with the command line: printed as one line without a traceback (ssd.cli.run)."""


def collect_images(entries: list[str]) -> list[Path]:
    """Image paths of files, folders (non-recursive, by extension) and globs, in the given order."""
    found: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(entry):
            matches = sorted(Path(p) for p in glob.glob(entry) if Path(p).is_file())
            if not matches:
                raise UsageError(f"--images: nothing matches {entry}")
            found += matches
        else:
            raise UsageError(f"--images: {entry} does not exist")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise UsageError(f"--images: no .jpg/.jpeg/.png files in {', '.join(entries)}")
    return unique


def output_name(path: Path, used: set[str]) -> str:
    """The image's own file name (PNG for formats other than JPEG/PNG), made unique."""
    suffix = path.suffix if path.suffix.lower() in IMAGE_EXTENSIONS else ".png"
    name, k = path.stem + suffix, 1
    while name in used:
        name, k = f"{path.stem}_{k}{suffix}", k + 1
    used.add(name)
    return name


class CheckpointDetector:
    """model_dir's config and a checkpoint, through ssd.inference.detector.Detector: batched inference."""

    def __init__(self, model_dir: str, checkpoint_path: str | None, batch_size: int | None,
                 precision: str = "float32"):
        from ssd.inference.detector import Detector, load_trained_model

        self.config, model, checkpoint, step = load_trained_model(model_dir, checkpoint_path, precision)
        logging.info("detector: %s (step %d)", checkpoint, step)
        self._detector = Detector(model, self.config)
        self.class_names = self._detector.class_names
        self.batch_size = batch_size or self.config.eval.batch_size

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return self._detector.detect_arrays(images)


class SavedModelDetector:
    """An exported SavedModel's uint8 signature, one image per call (sizes differ)."""

    def __init__(self, saved_model: str, score_threshold: float = 0.0):
        import tensorflow as tf

        from ssd.inference.saved_model import SIGNATURE_CLASS_NAMES, SIGNATURE_IMAGES

        loaded = tf.saved_model.load(saved_model)
        self._loaded = loaded  # keeps the signatures' variables alive
        self._serve = loaded.signatures[SIGNATURE_IMAGES]
        self._threshold = tf.constant(score_threshold, tf.float32)
        names = loaded.signatures[SIGNATURE_CLASS_NAMES]()["class_names"].numpy()
        self.class_names = [n.decode("utf-8") for n in names]
        self.batch_size = 1

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        import tensorflow as tf

        results = []
        for image in images:
            out = self._serve(images=tf.constant(image[np.newaxis]), score_threshold=self._threshold)
            results.append({"pixel_boxes": out["detection_pixel_boxes"][0].numpy(),
                            "scores": out["detection_scores"][0].numpy(),
                            "classes": out["detection_classes"][0].numpy().astype(np.int32),
                            "num_detections": int(out["num_detections"][0])})
        return results


def read_image(path: Path) -> Image.Image:
    """The image as stored (its EXIF still readable), decoded."""
    with Image.open(path) as image:
        image.load()
        return image


def read_ground_truth(annotation: Path, class_names: list[str]):
    """(VOC annotation, boxes [N, 4] VOC pixels, labels [N], names of objects of unknown classes)."""
    from ssd.voc.annotations import labeled_boxes, parse_voc_xml

    parsed = parse_voc_xml(annotation)
    boxes, labels, _, unknown = labeled_boxes(parsed, class_names)
    return parsed, boxes, labels, unknown


def picture(stored: Image.Image, annotated: bool, annotated_size: tuple[int, int] | None, policy: str
            ) -> tuple[Image.Image, str | None]:
    """(the RGB pixels to draw on and detect in, a warning or None).

    Not annotated: the picture upright by its EXIF orientation. Annotated: the grid the
    annotation's (width, height) refers to (None: no usable <size>), by the converters' rule.
    """
    from ssd.data.orientation import apply_orientation, orient_for_annotation, orientation_of

    if not annotated:
        return apply_orientation(stored, orientation_of(stored)).convert("RGB"), None
    pixels, orientation, choice = orient_for_annotation(stored, annotated_size, policy)
    warning = None
    if choice.decided_by == "policy" and policy == "auto":
        warning = (f"EXIF orientation {orientation} and the annotation's <size> cannot tell whether "
                   f"its boxes refer to the upright picture; drawn on the stored "
                   f"{stored.width}x{stored.height} grid (--exif=apply for upright)")
    return pixels.convert("RGB"), warning


def ground_truth_image(image: Image.Image, boxes: np.ndarray, labels: np.ndarray,
                       class_names: list[str]) -> Image.Image:
    from ssd.draw import draw_boxes
    from ssd.voc.coords import voc_to_normalized

    height, width = image.height, image.width
    edges = voc_to_normalized(boxes, height, width) * np.array([height, width, height, width])
    return draw_boxes(image, edges, labels, class_names)


def draw(image: Image.Image, detection: dict, class_names: list[str], threshold: float) -> tuple[Image.Image, int]:
    from ssd.draw import draw_boxes

    n = detection["num_detections"]
    scores = detection["scores"][:n]
    drawn = draw_boxes(image, detection["pixel_boxes"][:n], detection["classes"][:n], class_names, scores,
                       score_threshold=threshold)
    return drawn, int(np.count_nonzero(scores >= threshold))


def _load(path: Path, annotations_dir: Path | None, class_names: list[str], policy: str) -> dict:
    """One image's pixels to draw on and, when its annotation reads, the ground truth."""
    from ssd.voc.annotations import VocXmlError

    item = {"path": path, "truth": None, "problem": None}
    stored = read_image(path)
    annotated, annotated_size = False, None
    if annotations_dir is not None:
        annotation = annotations_dir / f"{path.stem}.xml"
        if not annotation.is_file():
            item["problem"] = f"no annotation {annotation}"
        else:
            try:
                parsed, boxes, labels, unknown = read_ground_truth(annotation, class_names)
            except VocXmlError as e:
                item["problem"] = str(e)
            else:
                item["truth"] = (boxes, labels, unknown)
                annotated = True
                annotated_size = None if parsed.width is None else (parsed.width, parsed.height)
    item["image"], warning = picture(stored, annotated, annotated_size, policy)
    if warning:
        logging.warning("%s: %s", path, warning)
    return item


def run(paths: list[Path], detector, output_dir: Path, threshold: float,
        annotations_dir: Path | None, exif_policy: str = "auto") -> dict:
    """Draws every image; returns the counts (written, skipped, boxes, no_annotation) and
    "unknown_classes": {name: objects} of annotated classes the model does not know."""
    from collections import Counter

    from ssd.draw import side_by_side
    from ssd.progress import Progress

    output_dir.mkdir(parents=True, exist_ok=True)
    inputs = {p.parent for p in paths}
    if output_dir.resolve() in inputs:
        raise UsageError(f"--output_dir {output_dir} holds input images, which would be overwritten")
    used: set[str] = set()
    counts: dict = {"written": 0, "skipped": 0, "boxes": 0, "no_annotation": 0}
    unknown_classes: Counter = Counter()
    skipped: list[str] = []
    progress = Progress(len(paths), label="visualize")
    for start in range(0, len(paths), detector.batch_size):
        batch = []
        for path in paths[start:start + detector.batch_size]:
            try:
                batch.append(_load(path, annotations_dir, detector.class_names, exif_policy))
            except (UnidentifiedImageError, OSError, ValueError) as e:
                counts["skipped"] += 1
                skipped.append(str(path))
                logging.warning("skipping %s: not a readable image (%s)", path, e)
                progress.update()
        if not batch:
            continue
        detections = detector([np.asarray(item["image"]) for item in batch])
        for item, detection in zip(batch, detections):
            path, image = item["path"], item["image"]
            drawn, shown = draw(image, detection, detector.class_names, threshold)
            counts["boxes"] += shown
            if annotations_dir is not None:
                if item["truth"] is None:
                    counts["no_annotation"] += 1
                    logging.warning("%s: no ground truth drawn (%s)", path, item["problem"])
                else:
                    boxes, labels, unknown = item["truth"]
                    unknown_classes.update(unknown)
                    truth = ground_truth_image(image, boxes, labels, detector.class_names)
                    drawn = side_by_side(drawn, truth, titles=("detections", "ground truth"))
            name = output_name(path, used)
            save_options = {"quality": 95} if name.lower().endswith((".jpg", ".jpeg")) else {}
            drawn.save(output_dir / name, **save_options)
            counts["written"] += 1
            progress.update()
    progress.close()
    if skipped:
        listed = ", ".join(skipped[:MAX_LISTED_SKIPS]) + (", ..." if len(skipped) > MAX_LISTED_SKIPS else "")
        logging.warning("%d unreadable images skipped: %s", len(skipped), listed)
    for name, number in sorted(unknown_classes.items()):
        logging.warning("annotations: %d objects of class %r, which the model does not know (its "
                        "classes: %s); not drawn", number, name, ", ".join(detector.class_names))
    counts["unknown_classes"] = dict(sorted(unknown_classes.items()))
    return counts


def summary_line(counts: dict, threshold: float, output_dir: str, annotated: bool) -> str:
    line = (f"wrote {counts['written']} images ({counts['boxes']} boxes >= {threshold}) to "
            f"{output_dir}; skipped {counts['skipped']} unreadable")
    if annotated:
        line += f"; {counts['no_annotation']} without annotation"
        unknown = counts["unknown_classes"]
        if unknown:
            line += (f"; {sum(unknown.values())} annotated objects of classes the model does not "
                     f"know, not drawn: " + ", ".join(f"{n} ({c})" for n, c in unknown.items()))
    return line


def main(argv) -> None:
    cli.kernels_for_precision(FLAGS.precision)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.images:
        raise app.UsageError("--images is required")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    if bool(FLAGS.model_dir) == bool(FLAGS.saved_model):
        raise app.UsageError("give exactly one of --model_dir and --saved_model")
    if FLAGS.checkpoint_path and not FLAGS.model_dir:
        raise app.UsageError("--checkpoint_path goes with --model_dir")

    try:  # UserErrors (bad config, checkpoint, ...) are printed as one line by cli.run
        paths = collect_images(FLAGS.images)
        annotations_dir = Path(FLAGS.annotations_dir) if FLAGS.annotations_dir else None
        if annotations_dir is not None and not annotations_dir.is_dir():
            raise UsageError(f"--annotations_dir {annotations_dir} is not a directory")
        if FLAGS.saved_model:
            detector = SavedModelDetector(FLAGS.saved_model, FLAGS.score_threshold)
        else:
            detector = CheckpointDetector(FLAGS.model_dir, FLAGS.checkpoint_path, FLAGS.batch_size,
                                          FLAGS.precision)
        counts = run(paths, detector, Path(FLAGS.output_dir), FLAGS.score_threshold, annotations_dir,
                     FLAGS.exif)
    except OSError as e:  # an --output_dir that cannot be written, ...
        cli.user_error(str(e))
    print(summary_line(counts, FLAGS.score_threshold, FLAGS.output_dir, annotations_dir is not None))


if __name__ == "__main__":
    cli.run(main)
