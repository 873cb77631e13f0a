r"""Draws a trained SSD's detections on images, at their original resolution.

  python visualize.py --images=photos/,extra.jpg --model_dir=runs/ssd300 --output_dir=drawn \
      [--checkpoint_path=runs/ssd300/ckpt-120000] [--score_threshold=0.5] \
      [--annotations_dir=VOC2007/Annotations]
  python visualize.py --images=photos/ --saved_model=exported/ssd300 --output_dir=drawn

--images takes files, folders (their .jpg/.jpeg/.png files) and globs, comma-separated; any size,
grayscale and RGBA too. The detector is model_dir's config and latest checkpoint (or
--checkpoint_path), or an exported SavedModel (--saved_model). Each image is written to
--output_dir under its own name with the boxes scoring at least --score_threshold drawn with
class names and scores. With --annotations_dir, the VOC XML of the same stem is drawn beside the
detections (detections left, ground truth right). Unreadable images are skipped, counted and
logged.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python visualize.py` from anywhere: make `ssd` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from ssd import cli  # first: keeps TensorFlow's start-up lines quiet, whoever imports it

cli.quiet_tensorflow_startup()

import numpy as np
from absl import app, flags, logging
from PIL import Image, UnidentifiedImageError

from ssd import config as config_lib

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
flags.DEFINE_integer("batch_size", None, "Images per inference call (with --model_dir); default "
                     "eval.batch_size.")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MAX_LISTED_SKIPS = 10


class UsageError(Exception):
    """A problem with the command line; main() prints it without a traceback."""


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
    """model_dir's config and a checkpoint, through ssd.detector.Detector: batched inference."""

    def __init__(self, model_dir: str, checkpoint_path: str | None, batch_size: int | None,
                 precision: str = "float32"):
        from ssd import checkpoints
        from ssd.detector import Detector, build_inference_model

        self.config = config_lib.load_saved_config(model_dir)
        checkpoint = checkpoints.find_checkpoint(model_dir, checkpoint_path)
        model = build_inference_model(self.config, precision)
        step = checkpoints.restore_checkpoint(model, checkpoint, self.config)
        logging.info("detector: %s (step %d)", checkpoint, step)
        self._detector = Detector(model, self.config)
        self.class_names = self._detector.class_names
        self.batch_size = batch_size or self.config.eval.batch_size

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return self._detector.detect_arrays(images)


class SavedModelDetector:
    """An exported SavedModel's uint8 signature, one image per call (sizes differ)."""

    def __init__(self, saved_model: str):
        import tensorflow as tf

        from ssd.export import SIGNATURE_CLASS_NAMES, SIGNATURE_IMAGES

        loaded = tf.saved_model.load(saved_model)
        self._loaded = loaded  # keeps the signatures' variables alive
        self._serve = loaded.signatures[SIGNATURE_IMAGES]
        names = loaded.signatures[SIGNATURE_CLASS_NAMES]()["class_names"].numpy()
        self.class_names = [n.decode("utf-8") for n in names]
        self.batch_size = 1

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        import tensorflow as tf

        results = []
        for image in images:
            out = self._serve(images=tf.constant(image[np.newaxis]))
            results.append({"pixel_boxes": out["pixel_boxes"][0].numpy(), "scores": out["scores"][0].numpy(),
                            "classes": out["classes"][0].numpy(),
                            "num_detections": int(out["num_detections"][0])})
        return results


def read_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def ground_truth_image(image: Image.Image, annotation: Path, class_names: list[str]) -> Image.Image:
    from ssd.draw import draw_boxes
    from ssd.voc_coords import voc_to_normalized
    from ssd.voc_xml import read_annotation

    boxes, labels, _ = read_annotation(annotation, class_names)
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


def run(paths: list[Path], detector, output_dir: Path, threshold: float,
        annotations_dir: Path | None) -> dict[str, int]:
    from ssd.draw import side_by_side
    from ssd.progress import Progress

    output_dir.mkdir(parents=True, exist_ok=True)
    inputs = {p.parent for p in paths}
    if output_dir.resolve() in inputs:
        raise UsageError(f"--output_dir {output_dir} holds input images, which would be overwritten")
    used: set[str] = set()
    counts = {"written": 0, "skipped": 0, "boxes": 0, "no_annotation": 0}
    skipped: list[str] = []
    progress = Progress(len(paths), label="visualize")
    for start in range(0, len(paths), detector.batch_size):
        batch = []
        for path in paths[start:start + detector.batch_size]:
            try:
                batch.append((path, read_image(path)))
            except (UnidentifiedImageError, OSError, ValueError) as e:
                counts["skipped"] += 1
                skipped.append(str(path))
                logging.warning("skipping %s: not a readable image (%s)", path, e)
                progress.update()
        if not batch:
            continue
        detections = detector([np.asarray(image) for _, image in batch])
        for (path, image), detection in zip(batch, detections):
            drawn, shown = draw(image, detection, detector.class_names, threshold)
            counts["boxes"] += shown
            if annotations_dir is not None:
                annotation = annotations_dir / f"{path.stem}.xml"
                try:
                    truth = ground_truth_image(image, annotation, detector.class_names)
                    drawn = side_by_side(drawn, truth, titles=("detections", "ground truth"))
                except (FileNotFoundError, ValueError) as e:
                    counts["no_annotation"] += 1
                    logging.warning("%s: no ground truth drawn (%s)", path, e)
            name = output_name(path, used)
            save_options = {"quality": 95} if name.lower().endswith((".jpg", ".jpeg")) else {}
            drawn.save(output_dir / name, **save_options)
            counts["written"] += 1
            progress.update()
    progress.close()
    if skipped:
        listed = ", ".join(skipped[:MAX_LISTED_SKIPS]) + (", ..." if len(skipped) > MAX_LISTED_SKIPS else "")
        logging.warning("%d unreadable images skipped: %s", len(skipped), listed)
    return counts


def main(argv) -> None:
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

    from ssd import checkpoints

    try:
        paths = collect_images(FLAGS.images)
        annotations_dir = Path(FLAGS.annotations_dir) if FLAGS.annotations_dir else None
        if annotations_dir is not None and not annotations_dir.is_dir():
            raise UsageError(f"--annotations_dir {annotations_dir} is not a directory")
        if FLAGS.saved_model:
            detector = SavedModelDetector(FLAGS.saved_model)
        else:
            detector = CheckpointDetector(FLAGS.model_dir, FLAGS.checkpoint_path, FLAGS.batch_size,
                                          FLAGS.precision)
        counts = run(paths, detector, Path(FLAGS.output_dir), FLAGS.score_threshold, annotations_dir)
    except (UsageError, config_lib.ConfigError, checkpoints.NoCheckpointError,
            checkpoints.CheckpointMismatchError, OSError) as e:
        sys.exit(f"visualize.py: error: {e}")
    print(f"wrote {counts['written']} images ({counts['boxes']} boxes >= {FLAGS.score_threshold}) to "
          f"{FLAGS.output_dir}; skipped {counts['skipped']} unreadable"
          + (f"; {counts['no_annotation']} without annotation" if annotations_dir else ""))


if __name__ == "__main__":
    cli.run(main)
