"""visualize.py: drawn copies at the original size, ground truth side by side, skips, SavedModel mode."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd.config.loading import load_config, save_config
from ssd.draw import class_colors
from ssd.modeling import checkpoints
from ssd.inference.detector import build_inference_model
from ssd.engine.estimator import ModelContext
from ssd.inference.saved_model import export_saved_model
from ssd.engine.model_fn import SSDModelFn

pytestmark = pytest.mark.slow  # trains a model or starts processes


REPO = Path(__file__).resolve().parents[2]
CLASS_NAMES = ["circle", "square", "triangle"]
# VOC box of the annotated image (1-based inclusive) -> continuous edges [10, 100] x [20, 90]
GT_BOX = (11, 21, 100, 90)
GT_LABEL = 2


def _save_checkpoint(config, model_dir):
    """A checkpoint laid out as the Estimator saves it."""
    tf.keras.utils.set_random_seed(11)
    global_step = tf.Variable(3, dtype=tf.int64, trainable=False, name="global_step")
    holder = SSDModelFn(config, ModelContext(global_step, 1))
    holder.optimizer.build(holder.model.trainable_variables)
    items = checkpoints.training_items(holder.model, global_step, holder.optimizer)
    checkpoints.Checkpointer(items, str(model_dir), max_to_keep=1).save(3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("visualize")
    config = load_config("ssd300_voc0712", {"model.width_multiplier": 0.125, "model.num_classes": 4,
                                            "data.class_names": CLASS_NAMES, "eval.batch_size": 2})
    model_dir = root / "model"
    save_config(config, model_dir)
    _save_checkpoint(config, model_dir)

    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    # smooth colours, so that drawn boxes are the only sharp edges
    Image.new("RGB", (120, 100), (90, 120, 150)).save(images / "annotated.png")
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)).save(images / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)).save(images / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (45, 65, 3), dtype=np.uint8)).save(images / "photo.jpg", quality=90)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "notes.txt").write_text("not an image, not picked from a folder")
    annotations = root / "Annotations"
    annotations.mkdir()
    xmin, ymin, xmax, ymax = GT_BOX
    (annotations / "annotated.xml").write_text(
        f"<annotation><object><name>{CLASS_NAMES[GT_LABEL - 1]}</name><difficult>0</difficult><bndbox>"
        f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        f"<object><name>horse</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax>"
        f"</bndbox></object></annotation>")  # a class the model does not know
    return {"root": root, "config": config, "model_dir": model_dir, "images": images,
            "annotations": annotations}


def _run(*flags):
    completed = subprocess.run([sys.executable, str(REPO / "visualize.py"), *flags],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def _rgb(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def drawn_by_checkpoint(setup):
    out = setup["root"] / "drawn"
    completed = _run(f"--images={setup['images']}", f"--model_dir={setup['model_dir']}",
                     f"--output_dir={out}", "--score_threshold=0.0",
                     f"--annotations_dir={setup['annotations']}")
    return out, completed


def test_checkpoint_detections_drawn_with_ground_truth_beside(setup, drawn_by_checkpoint):
    out, completed = drawn_by_checkpoint
    assert "wrote 4 images" in completed.stdout
    assert f"skipped 1 unreadable ({setup['images'].resolve() / 'broken.jpg'})" in completed.stdout
    assert "broken.jpg" in completed.stderr
    # a folder's other files are named, not passed over in silence
    assert f"left out 1 files of the folders that are not .jpg/.jpeg/.png/.bmp/.webp images " \
           f"({setup['images'] / 'notes.txt'})" in completed.stdout
    assert "notes.txt" in completed.stderr
    assert "visualize 5/5 (100.0%)" in completed.stderr  # progress counts skipped images too
    assert completed.stdout.rstrip().endswith(
        "; 1 annotated objects of classes the model does not know, not drawn: horse (1)")
    assert completed.stderr.count("does not know") == 1 and "class 'horse'" in completed.stderr
    assert sorted(p.name for p in out.iterdir()) == ["annotated.png", "gray.png", "photo.jpg", "rgba.png"]

    for name, (width, height) in (("gray.png", (70, 50)), ("rgba.png", (30, 40)), ("photo.jpg", (65, 45))):
        with Image.open(out / name) as drawn:
            assert drawn.size == (width, height)  # no annotation: detections only, original size
        assert np.any(_rgb(out / name) != _rgb(setup["images"] / name))

    original = _rgb(setup["images"] / "annotated.png")
    drawn = _rgb(out / "annotated.png")
    height, width = original.shape[:2]
    assert drawn.shape[1] == 2 * width + 8  # detections | 8 px gap | ground truth
    bar = drawn.shape[0] - height  # the title bar above both panels
    assert bar >= 0
    detections_panel = drawn[bar:, :width]
    truth_panel = drawn[bar:, width + 8:]
    assert np.any(detections_panel != original)
    # the ground-truth box outline, in its class colour, at its continuous pixel edges
    color = class_colors(len(CLASS_NAMES) + 1)[GT_LABEL]
    xmin_edge, ymin_edge, xmax_edge, ymax_edge = GT_BOX[0] - 1, GT_BOX[1] - 1, GT_BOX[2], GT_BOX[3]
    middle_y = (ymin_edge + ymax_edge) // 2
    assert tuple(truth_panel[middle_y, xmin_edge]) == color
    assert tuple(truth_panel[middle_y, xmax_edge]) == color
    assert tuple(truth_panel[ymax_edge, (xmin_edge + xmax_edge) // 2]) == color
    assert tuple(truth_panel[middle_y, xmin_edge - 3]) == tuple(original[middle_y, xmin_edge - 3])
    assert tuple(truth_panel[middle_y, (xmin_edge + xmax_edge) // 2]) == tuple(original[middle_y, 50])


def test_saved_model_detections_equal_checkpoint_ones(setup, drawn_by_checkpoint):
    config, model_dir = setup["config"], setup["model_dir"]
    model = build_inference_model(config)
    checkpoints.restore_checkpoint(model, checkpoints.find_checkpoint(str(model_dir)), config)
    saved_model = setup["root"] / "saved_model"
    export_saved_model(model, config, str(saved_model))
    out = setup["root"] / "drawn_saved"
    names = ("gray.png", "rgba.png", "photo.jpg")
    completed = _run(f"--images={','.join(str(setup['images'] / n) for n in names)}",
                     f"--saved_model={saved_model}", f"--output_dir={out}", "--score_threshold=0.0")
    assert "wrote 3 images" in completed.stdout
    for name in names:
        saved, checkpoint = _rgb(out / name), _rgb(drawn_by_checkpoint[0] / name)
        assert saved.shape == checkpoint.shape == _rgb(setup["images"] / name).shape
        # the same boxes and labels: at most a pixel's rounding of an edge may differ
        assert np.mean(np.any(np.abs(saved - checkpoint) > 8, axis=-1)) < 0.01


# --- what a person sees: EXIF orientation, and annotated classes the model does not know ------

UPRIGHT_SIZE = (60, 100)  # width, height of the picture shown upright
BACKGROUND = (90, 120, 150)
MARKER = (230, 30, 30)
MARKER_EDGES = (10, 60, 30, 90)  # continuous xmin, ymin, xmax, ymax on the upright picture


def _upright_picture():
    picture = np.zeros((UPRIGHT_SIZE[1], UPRIGHT_SIZE[0], 3), np.uint8)
    picture[...] = BACKGROUND
    xmin, ymin, xmax, ymax = MARKER_EDGES
    picture[ymin:ymax, xmin:xmax] = MARKER
    return picture


def _save_sideways(path):
    """The upright picture stored turned, tagged Orientation 6 (the tag says: turn 90 degrees
    clockwise to show it); returns the stored pixels."""
    stored = Image.fromarray(_upright_picture()).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=98, exif=exif)
    with Image.open(path) as check:
        assert check.size == (UPRIGHT_SIZE[1], UPRIGHT_SIZE[0]) and check.getexif()[0x0112] == 6
        return np.asarray(check.convert("RGB"))


def _marker_box(pixels):
    """VOC box (1-based inclusive) of the marker's pixels, found in the array itself."""
    ys, xs = np.nonzero((pixels[..., 0] > 180) & (pixels[..., 1] < 90))
    return xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1


def _near(box, expected):
    """Boxes equal up to a pixel (JPEG blurs the marker's edge)."""
    return max(abs(int(a) - int(b)) for a, b in zip(box, expected)) <= 1


def _xml(path, size, objects):
    parts = [f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for name, (xmin, ymin, xmax, ymax) in objects:
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin>"
                     f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    path.write_text("".join(parts) + "</annotation>")


# visualize.run with a detector that records the pixels it is given and finds nothing, in a
# process of its own: the app defines absl flags that other apps' tests define as well.
_RUNNER = """
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
import visualize
args = json.loads(sys.argv[2])

class RecordingDetector:
    class_names = args["class_names"]
    batch_size = 4

    def __init__(self):
        self.seen = []

    def __call__(self, images):
        self.seen += [np.array(image) for image in images]
        return [{"pixel_boxes": np.zeros((5, 4), np.float32), "scores": np.zeros(5, np.float32),
                 "classes": np.zeros(5, np.int32), "num_detections": 0} for _ in images]

detector = RecordingDetector()
if args.get("coco"):
    from ssd.coco.image_truth import read_image_truths
    annotations = read_image_truths(args["coco"])
else:
    annotations = visualize.VocAnnotations(Path(args["annotations"])) if args["annotations"] else None
counts = visualize.run([Path(p) for p in args["paths"]], detector, Path(args["out"]),
                       args["threshold"], annotations, args["policy"])
np.savez(args["seen"], *detector.seen)
print(json.dumps({"counts": counts, "summary": visualize.summary_line(
    counts, args["threshold"], "drawn", annotations is not None)}))
"""


def _run_recording(root, paths, out, annotations_dir=None, policy="auto", threshold=0.5, coco=None):
    """(counts, summary line, the arrays the detector was given, stderr) of visualize.run."""
    import json

    seen = root / f"seen_{out.name}.npz"
    args = {"paths": [str(p) for p in paths], "out": str(out), "threshold": threshold,
            "annotations": None if annotations_dir is None else str(annotations_dir),
            "policy": policy, "class_names": CLASS_NAMES, "seen": str(seen),
            "coco": None if coco is None else str(coco)}
    completed = subprocess.run([sys.executable, "-c", _RUNNER, str(REPO), json.dumps(args)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    with np.load(seen) as arrays:
        images = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    return result["counts"], result["summary"], images, completed.stderr


def _close(pixel, color, tolerance=40):
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(color, int)) <= tolerance))


def _panels(drawn, width):
    """(detections panel, ground-truth panel) of a side-by-side picture, below the title bar."""
    bar = drawn.shape[0] - UPRIGHT_SIZE[1]
    return drawn[bar:, :width], drawn[bar:, width + 8:]


@pytest.fixture
def sideways(tmp_path):
    images, annotations = tmp_path / "images", tmp_path / "Annotations"
    images.mkdir()
    annotations.mkdir()
    stored = _save_sideways(images / "phone.jpg")
    upright_box = _marker_box(_upright_picture())
    assert upright_box == (11, 61, 30, 90)
    return {"root": tmp_path, "images": images, "annotations": annotations, "stored": stored,
            "upright_box": upright_box}


def test_sideways_photo_with_upright_annotation_is_drawn_and_detected_upright(sideways):
    _xml(sideways["annotations"] / "phone.xml", UPRIGHT_SIZE,
         [(CLASS_NAMES[GT_LABEL - 1], sideways["upright_box"])])
    out = sideways["root"] / "drawn"
    counts, _, (seen,), _ = _run_recording(sideways["root"], [sideways["images"] / "phone.jpg"], out,
                                           sideways["annotations"])
    assert counts["written"] == 1 and counts["no_annotation"] == 0 and counts["unknown_classes"] == {}
    assert seen.shape == (UPRIGHT_SIZE[1], UPRIGHT_SIZE[0], 3)  # the detector ran on upright pixels
    assert _near(_marker_box(seen), sideways["upright_box"])
    drawn = _rgb(out / "phone.jpg")
    assert drawn.shape[1] == 2 * UPRIGHT_SIZE[0] + 8
    detections, truth = _panels(drawn, UPRIGHT_SIZE[0])
    assert _near(_marker_box(detections), sideways["upright_box"])  # nothing drawn over the picture
    _assert_outline_on_marker(detections, truth)


def _assert_outline_on_marker(picture, truth):
    """The ground-truth panel differs from the picture by an outline in the class colour (green
    255: neither marker nor background is green) on the marker's edges, and nowhere near them."""
    assert class_colors(len(CLASS_NAMES) + 1)[GT_LABEL][1] == 255
    xmin, ymin, xmax, ymax = MARKER_EDGES
    middle_y, middle_x = (ymin + ymax) // 2, (xmin + xmax) // 2
    change = np.abs(truth - picture).sum(axis=-1)
    for y, x in ((middle_y, xmin), (middle_y, xmax - 1), (ymax - 1, middle_x)):
        assert change[y, x] > 100 and truth[y, x, 1] > 200, (y, x)
    for y, x in ((middle_y, xmin - 4), (middle_y, middle_x), (middle_y, xmax + 4), (ymax + 4, middle_x)):
        assert change[y, x] < 40, (y, x)
    assert _close(truth[middle_y, middle_x], MARKER) and _close(truth[middle_y, xmin - 4], BACKGROUND)


def test_sideways_photo_without_annotation_is_shown_upright(sideways):
    out = sideways["root"] / "drawn"
    _, _, (seen,), _ = _run_recording(sideways["root"], [sideways["images"] / "phone.jpg"], out)
    assert _near(_marker_box(seen), sideways["upright_box"])
    assert _near(_marker_box(_rgb(out / "phone.jpg")), sideways["upright_box"])


@pytest.mark.parametrize("policy, upright", [("auto", False), ("ignore", False), ("apply", True)])
def test_annotation_size_decides_the_grid_and_the_policy_when_it_cannot(sideways, policy, upright):
    stored_box = _marker_box(sideways["stored"])
    height, width = sideways["stored"].shape[:2]
    photo = [sideways["images"] / "phone.jpg"]
    # <size> of the stored grid: the boxes refer to the stored pixels, whatever the policy
    _xml(sideways["annotations"] / "phone.xml", (width, height), [(CLASS_NAMES[0], stored_box)])
    _, _, (seen,), stderr = _run_recording(sideways["root"], photo, sideways["root"] / "a",
                                           sideways["annotations"], policy)
    assert seen.shape == sideways["stored"].shape
    assert _near(_marker_box(seen), stored_box)
    assert "cannot tell" not in stderr
    # no <size>: the policy decides (auto warns, as the converters do)
    _xml(sideways["annotations"] / "phone.xml", ("", ""), [(CLASS_NAMES[0], stored_box)])
    _, _, (seen,), stderr = _run_recording(sideways["root"], photo, sideways["root"] / "b",
                                           sideways["annotations"], policy)
    expected = sideways["upright_box"] if upright else stored_box
    assert _near(_marker_box(seen), expected)
    assert ("cannot tell" in stderr) == (policy == "auto")


def test_unknown_annotated_classes_are_counted_and_reported(sideways):
    _xml(sideways["annotations"] / "phone.xml", UPRIGHT_SIZE,
         [("dog", (1, 1, 5, 5)), (CLASS_NAMES[GT_LABEL - 1], sideways["upright_box"]),
          ("cat", (2, 2, 9, 9)), ("dog", (3, 3, 8, 8))])
    counts, line, _, stderr = _run_recording(sideways["root"], [sideways["images"] / "phone.jpg"],
                                             sideways["root"] / "drawn", sideways["annotations"])
    assert counts["unknown_classes"] == {"cat": 1, "dog": 2}
    warnings = [row for row in stderr.splitlines() if "does not know" in row]
    assert len(warnings) == 2
    assert "1 objects of class 'cat'" in warnings[0] and "2 objects of class 'dog'" in warnings[1]
    assert line.endswith("; 0 without annotation; 3 annotated objects of classes the model does not "
                         "know, not drawn: cat (1), dog (2)")
    # the known object is still drawn
    _assert_outline_on_marker(*_panels(_rgb(sideways["root"] / "drawn" / "phone.jpg"), UPRIGHT_SIZE[0]))


# --- COCO annotations, and the image formats read -----------------------------------------------

def _coco_json(path, images, annotations, categories):
    import json
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_coco_annotations_file_draws_the_ground_truth_of_the_image_of_that_file_name(sideways):
    xmin, ymin, xmax, ymax = MARKER_EDGES  # continuous edges on the upright picture
    Image.fromarray(_upright_picture()).save(sideways["images"] / "other.png")
    coco = _coco_json(
        sideways["root"] / "instances.json",
        # file names with the folders of the data set; the upright size, so boxes refer to it
        [{"id": 31, "file_name": "val/phone.jpg", "width": UPRIGHT_SIZE[0], "height": UPRIGHT_SIZE[1]},
         {"id": 32, "file_name": "val/unrelated.jpg", "width": 10, "height": 10}],
        [{"id": 1, "image_id": 31, "category_id": 7, "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
          "area": 600.0, "iscrowd": 0},
         {"id": 2, "image_id": 31, "category_id": 9, "bbox": [1, 1, 4, 4], "area": 16.0, "iscrowd": 0}],
        [{"id": 7, "name": CLASS_NAMES[GT_LABEL - 1]}, {"id": 9, "name": "horse"}])
    out = sideways["root"] / "drawn"
    counts, line, (seen, _), stderr = _run_recording(
        sideways["root"], [sideways["images"] / "phone.jpg", sideways["images"] / "other.png"], out,
        coco=coco)
    assert counts["written"] == 2 and counts["no_annotation"] == 1
    assert counts["unknown_classes"] == {"horse": 1}
    assert f"other.png: no ground truth drawn (no image named other.png in {coco})" in stderr
    assert line.endswith("; 1 without annotation; 1 annotated objects of classes the model does not "
                         "know, not drawn: horse (1)")
    assert seen.shape == (UPRIGHT_SIZE[1], UPRIGHT_SIZE[0], 3)  # the JSON's size: upright pixels
    drawn = _rgb(out / "phone.jpg")
    assert drawn.shape[1] == 2 * UPRIGHT_SIZE[0] + 8
    _assert_outline_on_marker(*_panels(drawn, UPRIGHT_SIZE[0]))
    assert _rgb(out / "other.png").shape == (UPRIGHT_SIZE[1], UPRIGHT_SIZE[0], 3)  # detections only


def test_a_bad_coco_annotations_file_is_one_line_naming_it(setup, tmp_path):
    bad = tmp_path / "instances.json"
    bad.write_text('{"images": [], "annotations": {}}')
    completed = subprocess.run(
        [sys.executable, str(REPO / "visualize.py"), f"--images={setup['images'] / 'gray.png'}",
         f"--model_dir={setup['model_dir']}", f"--output_dir={tmp_path / 'out'}",
         f"--annotations_file={bad}"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == (
        f"visualize.py: error: {bad}: a COCO annotations file has a list 'annotations'")


def test_bmp_and_webp_images_are_read_and_unreadable_ones_named(tmp_path):
    picture = _upright_picture()
    Image.fromarray(picture).save(tmp_path / "a.bmp")
    Image.fromarray(picture).save(tmp_path / "b.webp", lossless=True)
    (tmp_path / "c.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBP damaged")
    paths = [tmp_path / name for name in ("a.bmp", "b.webp", "c.webp")]
    counts, line, seen, stderr = _run_recording(tmp_path, paths, tmp_path / "drawn")
    assert counts["written"] == 2 and counts["skipped"] == 1
    assert counts["skipped_files"] == [str(tmp_path / "c.webp")]
    assert f"skipped 1 unreadable ({tmp_path / 'c.webp'})" in line
    assert f"skipping {tmp_path / 'c.webp'}: not a readable image" in stderr
    for array in seen:
        np.testing.assert_array_equal(array, picture)  # both lossless: the very pixels
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["a.png", "b.png"]
