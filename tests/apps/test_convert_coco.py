import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # dataset/ holds scripts, not an installed package
    sys.path.insert(0, str(REPO))

from dataset import coco_categories, convert_coco, tfrecord_writer  # noqa: E402
from dataset.coco_categories import CategorySelectionError  # noqa: E402
from dataset.tfrecord_writer import ConversionError  # noqa: E402
from ssd.data import records  # noqa: E402
from ssd.coco.categories import Category, CategoryError, read_category_map, write_category_map  # noqa: E402
from ssd.coco.coords import coco_to_normalized, normalized_to_coco  # noqa: E402

pytestmark = pytest.mark.slow  # trains a model or starts processes


W, H = 80, 60
# Sparse ids, listed out of id order: labels follow the list (dog 1, person 2, car 3).
CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


# ----------------------------------------------------------------------------- pure functions

def test_coco_boxes_to_normalized_by_hand():
    boxes = np.array([[10, 20, 30, 40],    # x 10..40 of W 50, y 20..60 of H 100
                      [0, 0, 50, 100]])    # the whole image
    expected = np.array([[0.2, 0.2, 0.6, 0.8], [0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_allclose(coco_to_normalized(boxes, 100, 50), expected, atol=1e-12)
    np.testing.assert_allclose(normalized_to_coco(expected, 100, 50), boxes, atol=1e-12)
    assert coco_to_normalized(np.zeros((0, 4)), 10, 10).shape == (0, 4)


def test_coco_box_round_trip():
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(0, 300, (20, 2)), rng.uniform(0.5, 200, (20, 2))], axis=1)
    np.testing.assert_allclose(normalized_to_coco(coco_to_normalized(boxes, 480, 640), 480, 640), boxes,
                               atol=1e-9)


def category_map(categories, used_ids=None):
    """The class list of `categories` when annotations use every one (default)."""
    used = {c["id"] for c in categories} if used_ids is None else used_ids
    return coco_categories.select(categories, used, "test").categories


def test_category_map_follows_file_order_not_ids(tmp_path):
    mapped = category_map(CATEGORIES)
    assert mapped == [Category(1, 18, "dog"), Category(2, 1, "person"), Category(3, 3, "car")]
    path = tmp_path / "map.json"
    write_category_map(path, mapped)
    assert read_category_map(path) == mapped
    assert json.loads(path.read_text())["categories"][0] == {"label": 1, "coco_id": 18, "name": "dog"}
    with pytest.raises(CategorySelectionError, match="category id 18 is listed twice"):
        category_map(CATEGORIES + [{"id": 18, "name": "wolf"}])
    with pytest.raises(CategorySelectionError, match="'dog' is listed twice \\(ids 18 and 19\\)"):
        category_map(CATEGORIES + [{"id": 19, "name": "dog"}])
    with pytest.raises(CategorySelectionError, match="entry 1 needs an integer 'id'"):
        category_map([{"id": 1, "name": "a"}, {"id": "2", "name": "b"}], {1})
    path.write_text('{"categories": [{"label": 2, "coco_id": 1, "name": "a"}]}')
    with pytest.raises(CategoryError, match="labels must be 1..1"):
        read_category_map(path)
    path.write_text("{}")
    with pytest.raises(CategoryError, match="not a category map"):
        read_category_map(path)


def test_clip_coco_box_cases():
    clip = convert_coco.clip_coco_box
    assert clip((10.0, 5.0, 20.0, 30.0), H, W) == ((10.0, 5.0, 20.0, 30.0), None)
    assert clip((70.0, 50.0, 20.0, 20.0), H, W) == ((70.0, 50.0, 10.0, 10.0), "box_clipped")
    assert clip((-4.0, -2.0, 10.0, 10.0), H, W) == ((0.0, 0.0, 6.0, 8.0), "box_clipped")
    assert clip((5.0, 5.0, 0.0, 10.0), H, W) == (None, "box_empty")
    assert clip((5.0, 5.0, -3.0, 4.0), H, W) == (None, "box_empty")
    assert clip((80.0, 10.0, 5.0, 5.0), H, W) == (None, "box_outside")  # starts at the right edge
    assert clip((-10.0, 10.0, 10.0, 5.0), H, W) == (None, "box_outside")  # ends at the left edge


def test_records_carry_crowd_and_area_and_default_them(tmp_path):
    common = dict(encoded=b"x", image_format="jpeg", height=10, width=20, filename="a.jpg", source_id="7",
                  boxes=[[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 1.0]], labels=[1, 2], texts=["a", "b"],
                  difficult=[0, 0], truncated=[0, 0])
    with_fields = records.make_example(**common, is_crowd=[0, 1], area=[12.5, 200.0])
    without = records.make_example(**common)
    parsed = records.parse_example(with_fields.SerializeToString())
    np.testing.assert_array_equal(parsed["is_crowd"].numpy(), [False, True])
    np.testing.assert_array_equal(parsed["area"].numpy(), [12.5, 200.0])
    parsed = records.parse_example(without.SerializeToString())
    np.testing.assert_array_equal(parsed["is_crowd"].numpy(), [False, False])
    np.testing.assert_array_equal(parsed["area"].numpy(), [-1.0, -1.0])
    assert records.AREA not in without.features.feature
    with pytest.raises(ValueError, match="1 is_crowd for 2 boxes"):
        records.make_example(**common, is_crowd=[1])
    with pytest.raises(ValueError, match="3 area for 2 boxes"):
        records.make_example(**common, area=[1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------- files made here

def smooth_rgb(seed=0, height=H, width=W):
    y, x = np.mgrid[0:height, 0:width]
    base = np.random.default_rng(seed).integers(0, 100, size=3)
    return np.stack([base[0] + x * 2, base[1] + y * 2, base[2] + (x + y)], -1).clip(0, 255).astype(np.uint8)


def encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def jpeg(seed=0, height=H, width=W):
    return encode(Image.fromarray(smooth_rgb(seed, height, width)), "JPEG", quality=90)


def exif_jpeg(orientation, height, width):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(smooth_rgb(9, height, width)), "JPEG", quality=95, exif=exif)


def ann(image_id, category_id, bbox, iscrowd=0, area=None, **extra):
    entry = {"image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": iscrowd,
             "area": float(bbox[2] * bbox[3]) if area is None and len(bbox) == 4 else area, **extra}
    return {k: v for k, v in entry.items() if v is not None or k == "area"}


def write_set(directory: Path, images, annotations, categories=CATEGORIES, name="instances.json"):
    """images: [(id, file name, bytes or None, json (width, height) or None)]."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for image_id, file_name, data, size in images:
        if data is not None:
            (directory / "images" / file_name).write_bytes(data)
        entry = {"id": image_id, "file_name": file_name}
        if size is not None:
            entry.update(width=size[0], height=size[1])
        entries.append(entry)
    path = directory / name
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path, directory / "images"


def mixed_set(directory: Path):
    rgb = Image.fromarray(smooth_rgb(1))
    corrupt = jpeg(8)
    no_area = ann(101, 18, [30, 20, 10, 10])
    del no_area["area"]
    no_iscrowd = ann(103, 1, [5, 5, 25, 45])
    del no_iscrowd["iscrowd"]
    images = [
        (101, "good.jpg", jpeg(0), (W, H)),
        (102, "empty.jpg", jpeg(2), (W, H)),
        (103, "gray.png", encode(rgb.convert("L"), "PNG"), (W, H)),
        (104, "cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG", quality=95), (W, H)),
        (105, "scaled.jpg", jpeg(3), (2 * W, 2 * H)),   # a half-size copy: same aspect ratio
        (106, "wrongsize.jpg", jpeg(4), (W, W)),        # another aspect ratio: refused
        (107, "exif.jpg", exif_jpeg(6, H, W), (H, W)),  # stored 80x60, upright 60x80 as the JSON says
        (108, "crowdonly.jpg", jpeg(5), (W, H)),
        (109, "corrupt.jpg", corrupt[:len(corrupt) // 2], (W, H)),
    ]
    annotations = [
        ann(101, 1, [10, 12, 40, 30], area=777.5),
        ann(101, 3, [0, 0, 80, 60], iscrowd=1, area=3000.0),
        ann(101, 18, [70, 50, 20, 20]),     # clipped to [70, 50, 10, 10]
        ann(101, 18, [5, 5, 0, 10]),        # zero width: dropped
        ann(101, 1, [5, 5, -3, 4]),         # negative width: dropped
        ann(101, 1, [100, 10, 5, 5]),       # outside: dropped
        ann(101, 1, [1, 2, 3]),             # malformed: dropped
        no_area,                            # area: the box's, 100
        no_iscrowd,
        ann(104, 3, [20, 10, 50, 45]),
        ann(105, 1, [40, 30, 80, 60]),
        ann(106, 1, [1, 1, 10, 10]),
        ann(107, 18, [6, 8, 30, 40]),
        ann(108, 1, [10, 10, 30, 30], iscrowd=1),
        ann(109, 1, [1, 1, 5, 5]),
    ]
    for number, annotation in enumerate(annotations, 1):
        annotation["id"] = number
    return write_set(directory, images, annotations)


# Expected records: id -> (normalized boxes, labels, crowd, area, (height, width)).
EXPECTED = {
    "101": ([[12 / H, 10 / W, 42 / H, 50 / W], [0, 0, 1, 1], [50 / H, 70 / W, 1, 1],
             [20 / H, 30 / W, 30 / H, 40 / W]], [2, 3, 1, 1], [0, 1, 0, 0], [777.5, 3000.0, 400.0, 100.0],
            (H, W)),
    "102": ([], [], [], [], (H, W)),
    "103": ([[5 / H, 5 / W, 50 / H, 30 / W]], [2], [0], [1125.0], (H, W)),
    "104": ([[10 / H, 20 / W, 55 / H, 70 / W]], [3], [0], [2250.0], (H, W)),
    "105": ([[0.25, 0.25, 0.75, 0.75]], [2], [0], [4800.0], (H, W)),
    "107": ([[8 / W, 6 / H, 48 / W, 36 / H]], [1], [0], [1200.0], (W, H)),  # upright: 60 wide, 80 high
    "108": ([[10 / H, 10 / W, 40 / H, 40 / W]], [2], [1], [900.0], (H, W)),
}


def convert(annotations_file, image_dir, out, name="mixed", **kwargs):
    return convert_coco.convert_coco([annotations_file], [image_dir], out, name,
                                     progress_stream=io.StringIO(), **kwargs)


def read_records(paths):
    result = []
    for serialized in tf.data.TFRecordDataset([str(p) for p in paths]):
        parsed = {k: v.numpy() for k, v in records.parse_example(serialized).items()}
        texts = tf.io.parse_single_example(serialized, {records.TEXT: tf.io.VarLenFeature(tf.string)})
        parsed["texts"] = tf.sparse.to_dense(texts[records.TEXT]).numpy()
        result.append(parsed)
    return result


def source_ids(out, name):
    return [r["source_id"].decode() for r in read_records(tfrecord_writer.finished_shards(out, name))]


def records_by_id(out, name):
    return {r["source_id"].decode(): r for r in read_records(tfrecord_writer.finished_shards(out, name))}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return mixed_set(tmp_path_factory.mktemp("coco"))


def test_real_world_cases_have_their_stated_outcomes(mixed, tmp_path):
    summary = convert(*mixed, tmp_path, num_shards=2)
    written = records_by_id(tmp_path, "mixed")
    assert set(written) == set(EXPECTED)
    names = {1: b"dog", 2: b"person", 3: b"car"}
    for image_id, (boxes, labels, crowd, area, size) in EXPECTED.items():
        record = written[image_id]
        np.testing.assert_allclose(record["boxes"], np.array(boxes, np.float64).reshape(-1, 4), atol=1e-6)
        np.testing.assert_array_equal(record["labels"], labels)
        np.testing.assert_array_equal(record["is_crowd"], np.array(crowd, bool))
        np.testing.assert_allclose(record["area"], area)
        assert record["texts"].tolist() == [names[label] for label in labels]
        decoded = tf.io.decode_jpeg(record["encoded"]).numpy()
        assert decoded.shape == (*size, 3) and (record["height"], record["width"]) == size
        assert not record["difficult"].any() and not record["truncated"].any()
    assert written["101"]["filename"] == b"good.jpg" and written["103"]["filename"] == b"gray.png"
    assert summary["classes"] == ["dog", "person", "car"]
    assert summary["num_images"] == 7 and summary["num_objects"] == 9 and summary["num_crowd"] == 2
    assert summary["num_empty_images"] == 1
    assert summary["objects_per_class"] == {"dog": 3, "person": 4, "car": 2}
    reasons = {s["image_id"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"106", "109"} and summary["num_skipped"] == 2
    assert reasons["106"] == ("size mismatch: the JSON says 80x80 but the image is 80x60 "
                              "(another aspect ratio)")
    assert reasons["109"].startswith("corrupt image")
    assert summary["warnings"] == {"area_missing": 1, "box_clipped": 1, "box_empty": 2, "box_invalid": 1,
                                   "box_outside": 1, "iscrowd_missing": 1, "size_scaled": 1}
    clipped = summary["warning_examples"]["box_clipped"][0]
    assert "image 101 (good.jpg): dog box [70.0, 50.0, 20.0, 20.0] in a 80x60 image clipped to " \
           "[70.0, 50.0, 10.0, 10.0]" in clipped
    assert set(summary["reencoded_images"]) == {"PNG/L", "JPEG/CMYK", "JPEG/RGB+EXIF6"}
    assert summary["exif_orientation"]["turned_upright_by"] == {"size": 1}
    assert summary["category_map"] == "mixed_categories.json"
    assert read_category_map(tmp_path / "mixed_categories.json") == category_map(CATEGORIES)


def test_skip_empty_drops_images_without_non_crowd_objects(mixed, tmp_path):
    summary = convert(*mixed, tmp_path, drop_empty=True)
    assert set(records_by_id(tmp_path, "mixed")) == set(EXPECTED) - {"102", "108"}
    reasons = {s["image_id"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"102", "106", "108", "109"}
    assert reasons["102"] == reasons["108"] == "no objects other than crowd regions (--skip_empty)"
    assert summary["num_empty_images"] == 0 and summary["num_crowd"] == 1


def test_output_is_deterministic_whatever_the_workers(mixed, tmp_path):
    def digests(out):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}

    convert(*mixed, tmp_path / "a", num_shards=3, num_workers=1)
    convert(*mixed, tmp_path / "b", num_shards=3, num_workers=2)
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert len(a) == 5 and a == b  # 3 shards, category map, summary
    convert(*mixed, tmp_path / "c", num_shards=1, shuffle_seed=None)
    order = source_ids(tmp_path / "c", "mixed")
    assert order == ["101", "102", "103", "104", "105", "107", "108"]  # the file's order
    convert(*mixed, tmp_path / "d", num_shards=1, shuffle_seed=5)
    shuffled = source_ids(tmp_path / "d", "mixed")
    assert shuffled == sorted(order, key=lambda i: tfrecord_writer.shuffle_key(5, i)) and shuffled != order


def test_image_ids_file_selects_and_orders(mixed, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("105\n\n101\n105\n")
    summary = convert(*mixed, tmp_path / "out", image_ids_file=ids, shuffle_seed=None)
    order = source_ids(tmp_path / "out", "mixed")
    assert order == ["105", "101"] and summary["warnings"]["duplicate_id"] == 1
    assert summary["image_ids_file"] == str(ids)
    ids.write_text("101\n4242\n17\n")
    with pytest.raises(ConversionError,
                       match=r"2 ids of the image id list are in no annotation file:\n  4242\n  17"):
        convert(*mixed, tmp_path / "bad", image_ids_file=ids)
    ids.write_text("101\nCOCO_1\n")
    with pytest.raises(ConversionError, match=r"ids.txt:2: 'COCO_1' is not a COCO image id"):
        convert(*mixed, tmp_path / "bad", image_ids_file=ids)


def test_input_errors_name_what_to_fix(tmp_path):
    images = [(1, "a.jpg", jpeg(0), (W, H)), (2, "b.jpg", jpeg(1), (W, H))]
    unknown = [ann(1, 18, [1, 1, 5, 5]), ann(2, 99, [1, 1, 5, 5]), ann(2, 42, [1, 1, 5, 5])]
    path, image_dir = write_set(tmp_path / "unknown", images, unknown)
    with pytest.raises(ConversionError, match=r"2 category ids .*\n  category_id 42: 1 annotations\n  "
                                              r"category_id 99: 1 annotations"):
        convert(path, image_dir, tmp_path / "out")
    path, image_dir = write_set(tmp_path / "noimage", images, [ann(3, 18, [1, 1, 5, 5])])
    with pytest.raises(ConversionError,
                       match=r"refer to 1 image ids that are not in 'images':\n  image_id 3"):
        convert(path, image_dir, tmp_path / "out")
    path, image_dir = write_set(tmp_path / "dup", images + [(2, "c.jpg", jpeg(2), (W, H))], [])
    with pytest.raises(ConversionError,
                       match=r"1 image ids are listed more than once .*\n  image id 2 \(c.jpg\)"):
        convert(path, image_dir, tmp_path / "out")
    path, image_dir = write_set(tmp_path / "dupcat", images, [],
                                categories=CATEGORIES + [{"id": 1, "name": "x"}])
    with pytest.raises(ConversionError, match="category id 1 is listed twice"):
        convert(path, image_dir, tmp_path / "out")
    path, image_dir = write_set(tmp_path / "notobject", images, [ann(1, 18, [1, 1, 5, 5]), [1, 2]])
    with pytest.raises(ConversionError, match=r"instances.json: annotations\[1\] is not an object"):
        convert(path, image_dir, tmp_path / "out")
    (tmp_path / "broken.json").write_text('{"images": []')
    with pytest.raises(ConversionError, match="cannot read .*broken.json"):
        convert(tmp_path / "broken.json", image_dir, tmp_path / "out")
    (tmp_path / "notcoco.json").write_text('{"annotations": []}')
    with pytest.raises(ConversionError, match="notcoco.json: not a COCO annotation file"):
        convert(tmp_path / "notcoco.json", image_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the input is known good


def test_missing_images_fail_or_are_skipped_and_listed(tmp_path):
    images = [(1, "a.jpg", jpeg(0), (W, H)), (2, "gone.jpg", None, (W, H)), (3, "c.jpg", jpeg(1), None)]
    path, image_dir = write_set(tmp_path, images, [ann(2, 1, [1, 1, 5, 5]), ann(3, 1, [0, 0, 40, 30])])
    with pytest.raises(ConversionError,
                       match=r"1 image files are missing \(pass --skip_missing.*\n.*gone.jpg"):
        convert(path, image_dir, tmp_path / "out")
    summary = convert(path, image_dir, tmp_path / "out", skip_missing=True)
    assert summary["num_images"] == 2 and summary["num_missing"] == 1
    assert summary["skipped"] == [{"image_id": "2", "file": str(image_dir / "gone.jpg"),
                                   "reason": f"missing file: no {image_dir / 'gone.jpg'}"}]
    # an image without a JSON size is normalized by its own size, with a warning
    assert summary["warnings"] == {"size_missing": 1}
    np.testing.assert_allclose(records_by_id(tmp_path / "out", "mixed")["3"]["boxes"], [[0, 0, 0.5, 0.5]])


def test_several_annotation_files_must_share_categories(tmp_path):
    first = write_set(tmp_path / "one", [(1, "a.jpg", jpeg(0), (W, H))], [ann(1, 3, [0, 0, 8, 6])])
    second = write_set(tmp_path / "two", [(2, "b.jpg", jpeg(1), (W, H))], [ann(2, 18, [8, 6, 8, 6])])
    summary = convert_coco.convert_coco([first[0], second[0]], [first[1], second[1]], tmp_path / "out",
                                        "both", shuffle_seed=None, progress_stream=io.StringIO())
    written = records_by_id(tmp_path / "out", "both")
    assert summary["num_images"] == 2 and len(summary["sources"]) == 2
    np.testing.assert_array_equal(written["1"]["labels"], [3])
    np.testing.assert_allclose(written["2"]["boxes"], [[0.1, 0.1, 0.2, 0.2]], atol=1e-7)
    other = write_set(tmp_path / "three", [(3, "c.jpg", jpeg(2), (W, H))], [], categories=CATEGORIES[::-1])
    with pytest.raises(ConversionError, match="lists other categories"):
        convert_coco.convert_coco([first[0], other[0]], [first[1], other[1]], tmp_path / "out", "x")
    again = write_set(tmp_path / "four", [(1, "d.jpg", jpeg(3), (W, H))], [])
    with pytest.raises(ConversionError, match=r"image id 1 \(d.jpg\) in .*four"):
        convert_coco.convert_coco([first[0], again[0]], [first[1], again[1]], tmp_path / "out", "x")
    with pytest.raises(ConversionError, match="one image directory per annotation file"):
        convert_coco.convert_coco([first[0], second[0]], [first[1]], tmp_path / "out", "x")


def test_command_line(mixed, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    script = str(REPO / "dataset" / "convert_coco.py")
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert shown.returncode == 0 and "--image_ids_file" in shown.stdout and "--skip_empty" in shown.stdout
    annotations_file, image_dir = mixed
    result = subprocess.run(
        [sys.executable, script, f"--annotations_file={annotations_file}", f"--image_dir={image_dir}",
         f"--output_directory={tmp_path}", "--num_shards=2", "--num_workers=2", "--skip_empty",
         "--noshuffle"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "coco_instances_summary.json").read_text())  # default name
    assert summary["num_images"] == 5 and summary["num_shards"] == 2
    assert summary["order"] == {"shuffled": False}
    assert "9/9" in result.stderr  # the progress line
    assert "coco_instances: 5 images, 8 objects (1 crowd), 4 skipped" in result.stdout
    failed = subprocess.run([sys.executable, script, f"--annotations_file={annotations_file}",
                             f"--image_dir={tmp_path / 'nowhere'}", f"--output_directory={tmp_path}"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "convert_coco.py: error: 9 image files are missing" in failed.stderr


@pytest.mark.parametrize("policy", ["auto", "apply", "ignore"])
def test_exif_rule_decides_the_pixel_grid(tmp_path, policy):
    images = [(1, "stored.jpg", exif_jpeg(6, H, W), (W, H)),    # the JSON gives the stored 80x60
              (2, "upright.jpg", exif_jpeg(8, H, W), (H, W)),   # the JSON gives the upright 60x80
              (3, "flipped.jpg", exif_jpeg(3, H, W), (W, H)),   # 180 degrees: the size cannot tell
              (4, "swapped.jpg", jpeg(1), (H, W))]              # no tag, 60x80 in the JSON: refused
    box = [6, 8, 30, 40]
    path, image_dir = write_set(tmp_path, images, [ann(i, 1, box) for i in (1, 2, 3, 4)])
    summary = convert(path, image_dir, tmp_path / "out", exif_policy=policy)
    written = records_by_id(tmp_path / "out", "mixed")
    sizes = {image_id: (int(r["height"]), int(r["width"])) for image_id, r in written.items()}
    assert sizes == {"1": (H, W), "2": (W, H), "3": (H, W)}
    np.testing.assert_allclose(written["1"]["boxes"], [[8 / H, 6 / W, 48 / H, 36 / W]], atol=1e-6)
    np.testing.assert_allclose(written["2"]["boxes"], [[8 / W, 6 / H, 48 / W, 36 / H]], atol=1e-6)
    exif = summary["exif_orientation"]
    assert exif["turned_upright_by"] == {"size": 1, **({"policy": 1} if policy == "apply" else {})}
    assert exif["kept_as_stored_by"] == {"size": 1, **({} if policy == "apply" else {"policy": 1})}
    assert summary["warnings"] == ({"exif_undecided": 1} if policy == "auto" else {})
    assert [s["image_id"] for s in summary["skipped"]] == ["4"]
    assert "the JSON says 60x80 but the image is 80x60" in summary["skipped"][0]["reason"]
    with pytest.raises(ConversionError, match="unknown EXIF policy 'sideways'"):
        convert(path, image_dir, tmp_path / "bad", exif_policy="sideways")
