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
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # dataset/ holds scripts, not an installed package
    sys.path.insert(0, str(REPO))

from dataset import convert_voc, voc_entries, tfrecord_writer, voc_image  # noqa: E402
from ssd.data import records  # noqa: E402
from ssd.voc import annotations as voc_xml
from ssd.voc.coords import voc_to_normalized  # noqa: E402

pytestmark = pytest.mark.slow  # trains a model or starts processes


CLASSES = ("cat", "dog", "person")
W, H = 80, 60


def smooth_rgb(seed=0, height=H, width=W):
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 100, size=3)
    return np.stack([base[0] + x * 2, base[1] + y * 2, base[2] + (x + y)], -1).clip(0, 255).astype(np.uint8)


def encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def obj_xml(name, box, difficult=0, truncated=0, pose="Frontal"):
    parts = [f"<name>{name}</name>"]
    if pose is not None:
        parts.append(f"<pose>{pose}</pose>")
    if truncated is not None:
        parts.append(f"<truncated>{truncated}</truncated>")
    if difficult is not None:
        parts.append(f"<difficult>{difficult}</difficult>")
    coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return "<object>" + "".join(parts) + f"<bndbox>{coords}</bndbox></object>"


def annotation_xml(filename, objects, size=(W, H)):
    size_xml = "" if size is None else \
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    return (f"<annotation>\n  <folder>VOC</folder>\n  <filename>{filename}</filename>\n  {size_xml}\n"
            f"  <segmented>0</segmented>\n  " + "\n  ".join(objects) + "\n</annotation>\n")


def good_jpeg(seed):
    return encode(Image.fromarray(smooth_rgb(seed)), "JPEG", quality=90)


def make_root(root: Path, items, split="trainval", list_order=None):
    """items: {image_id: (image file name, image bytes, xml text or None)}."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (image_name, data, xml) in items.items():
        if data is not None:
            (root / "JPEGImages" / image_name).write_bytes(data)
        if xml is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    ids = list_order or list(items)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


# Expected outcome per id: (kept boxes in VOC pixels, labels, difficult, truncated); None = skipped.
EXPECTED = {
    "good": ([(10, 12, 50, 40), (1, 1, 80, 60)], [2, 1], [1, 0], [0, 1]),
    "gray": ([(5, 5, 30, 50)], [3], [0], [0]),
    "cmyk": ([(20, 10, 70, 55)], [1], [0], [0]),
    "rgba": ([(2, 3, 40, 30)], [2], [0], [0]),
    "pngjpg": ([(3, 4, 5, 6)], [1], [0], [0]),
    "palette": ([(1, 1, 10, 10)], [2], [0], [0]),
    "png16": ([(30, 20, 60, 59)], [3], [0], [0]),
    "truncated": None,
    "defaults": ([(7, 8, 9, 10)], [2], [0], [0]),
    "floats": ([(45.7, 10.2, 70.5, 50.9)], [1], [0], [0]),
    "sizediff": ([(10, 10, 80, 60)], [3], [0], [0]),
    "nosize": ([(4, 4, 20, 20)], [1], [0], [0]),
    "outside": ([(1, 10, 80, 50)], [3], [0], [0]),
    "inverted": ([(1, 2, 3, 4)], [1], [0], [0]),
    "empty": ([], [], [], []),
    "malformed": None,
    "unknown": ([(6, 6, 12, 12)], [2], [0], [0]),
}
# Not alphabetical: the output must follow the split list.
LIST_ORDER = ["good", "unknown", "gray", "truncated", "cmyk", "rgba", "pngjpg", "palette", "png16",
              "defaults", "malformed", "floats", "sizediff", "nosize", "outside", "inverted", "empty"]

RGBA_PIXELS = np.concatenate([np.zeros((H, W // 2, 4), np.uint8),
                              np.full((H, W - W // 2, 4), (200, 40, 90, 255), np.uint8)], axis=1)
GRAY16 = (np.mgrid[0:H, 0:W][1] * 800 + 1000).astype(np.uint16)


def mixed_items():
    rgb = Image.fromarray(smooth_rgb(1))
    truncated = good_jpeg(7)
    xml = annotation_xml
    return {
        "good": ("good.jpg", good_jpeg(0),
                 xml("good.jpg", [obj_xml("dog", (10, 12, 50, 40), difficult=1),
                                  obj_xml(" cat ", (1, 1, 80, 60), truncated=1)])),
        "gray": ("gray.jpg", encode(rgb.convert("L"), "JPEG", quality=95),
                 xml("gray.jpg", [obj_xml("person", (5, 5, 30, 50))])),
        "cmyk": ("cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG", quality=95),
                 xml("cmyk.jpg", [obj_xml("cat", (20, 10, 70, 55))])),
        "rgba": ("rgba.png", encode(Image.fromarray(RGBA_PIXELS, "RGBA"), "PNG"),
                 xml("rgba.png", [obj_xml("dog", (2, 3, 40, 30))])),
        "pngjpg": ("pngjpg.jpg", encode(rgb, "PNG"), xml("pngjpg.jpg", [obj_xml("cat", (3, 4, 5, 6))])),
        "palette": ("palette.jpg", encode(rgb.quantize(32, dither=Image.Dither.NONE), "PNG"),
                    xml("palette.jpg", [obj_xml("dog", (1, 1, 10, 10))])),
        "png16": ("png16.jpg", encode(Image.fromarray(GRAY16), "PNG"),
                  xml("png16.jpg", [obj_xml("person", (30, 20, 60, 59))])),
        "truncated": ("truncated.jpg", truncated[:len(truncated) // 2],
                      xml("truncated.jpg", [obj_xml("cat", (1, 1, 5, 5))])),
        "defaults": ("defaults.jpg", good_jpeg(2),
                     xml("defaults.jpg", [obj_xml("dog", (7, 8, 9, 10), None, None, None)])),
        "floats": ("floats.jpg", good_jpeg(3),
                   xml("floats.jpg", [obj_xml("cat", ("45.7", "10.2", "70.5", "50.9"))])),
        "sizediff": ("sizediff.jpg", good_jpeg(4),
                     xml("sizediff.jpg", [obj_xml("person", (10, 10, 95, 95))], size=(100, 100))),
        "nosize": ("nosize.jpg", good_jpeg(5),
                   xml("nosize.jpg", [obj_xml("cat", (4, 4, 20, 20))], size=None)),
        "outside": ("outside.jpg", good_jpeg(6),
                    xml("outside.jpg", [obj_xml("person", (-5, 10, 90, 50)),
                                        obj_xml("cat", (85, 5, 95, 20))])),
        "inverted": ("inverted.jpg", good_jpeg(8),
                     xml("inverted.jpg", [obj_xml("dog", (50, 10, 20, 40)), obj_xml("cat", (1, 2, 3, 4))])),
        "empty": ("empty.jpg", good_jpeg(9), xml("empty.jpg", [])),
        "malformed": ("malformed.jpg", good_jpeg(10), "<annotation><object><name>dog</name>\n"),
        "unknown": ("unknown.jpg", good_jpeg(11),
                    xml("unknown.jpg", [obj_xml("unicorn", (1, 1, 5, 5)), obj_xml("dog", (6, 6, 12, 12))])),
    }


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("voc") / "MIXED", mixed_items(), list_order=LIST_ORDER)


def convert(root, out, **kwargs):
    kwargs.setdefault("skip_unknown_classes", True)
    return convert_voc.convert_voc([root], out, "mixed", CLASSES, splits=("trainval",),
                                   progress_stream=io.StringIO(), **kwargs)


def read_records(paths):
    result = []
    for serialized in tf.data.TFRecordDataset([str(p) for p in paths]):
        parsed = records.parse_example(serialized)
        result.append({k: v.numpy() for k, v in parsed.items()})
    return result


@pytest.fixture(scope="module")
def converted(mixed_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    summary = convert(mixed_root, out, num_shards=3, shuffle_seed=None)
    return out, summary


def test_records_follow_the_xml(mixed_root, converted):
    out, summary = converted
    shards = tfrecord_writer.finished_shards(out, "mixed")
    assert [p.name for p in shards] == [f"mixed-0000{i}-of-00003" for i in range(3)]
    kept_ids = [i for i in LIST_ORDER if EXPECTED[i] is not None]
    by_shard = [read_records([p]) for p in shards]
    # record k of the split order goes to shard k mod 3, in order
    for shard_index, shard_records in enumerate(by_shard):
        assert [r["source_id"].decode() for r in shard_records] == kept_ids[shard_index::3]
    for record in sum(by_shard, []):
        image_id = record["source_id"].decode()
        boxes, labels, difficult, truncated = EXPECTED[image_id]
        image = tf.io.decode_jpeg(record["encoded"]).numpy()
        assert image.shape == (H, W, 3) and (record["height"], record["width"]) == (H, W)
        expected_boxes = voc_to_normalized(np.array(boxes, np.float64).reshape(-1, 4), H, W)
        np.testing.assert_allclose(record["boxes"], expected_boxes, atol=1e-6)
        np.testing.assert_array_equal(record["labels"], labels)
        np.testing.assert_array_equal(record["difficult"], np.array(difficult, bool))
        np.testing.assert_array_equal(record["truncated"], np.array(truncated, bool))
        source_name = {"rgba": "rgba.png"}.get(image_id, f"{image_id}.jpg")
        assert record["filename"].decode() == source_name
        original = (mixed_root / "JPEGImages" / source_name).read_bytes()
        plain_jpeg = image_id not in ("gray", "cmyk", "rgba", "pngjpg", "palette", "png16")
        assert (record["encoded"] == original) == plain_jpeg, image_id


def test_reencoded_images_keep_their_pixels(mixed_root, converted):
    out, _ = converted
    decoded = {r["source_id"].decode(): tf.io.decode_jpeg(r["encoded"]).numpy().astype(float)
               for r in read_records(tfrecord_writer.finished_shards(out, "mixed"))}
    source = {i: np.asarray(Image.open(mixed_root / "JPEGImages" / f"{i}.jpg").convert("RGB"), float)
              for i in ("gray", "cmyk", "pngjpg", "palette")}
    gray = decoded["gray"]
    assert np.abs(gray[..., 0] - gray[..., 1]).mean() < 2 and np.abs(gray[..., 1] - gray[..., 2]).mean() < 2
    for image_id, pixels in source.items():
        assert np.abs(decoded[image_id] - pixels).mean() < 4, image_id
    rgba = decoded["rgba"]
    assert rgba[:, : W // 2 - 8].min() > 245  # transparent half composited on white
    np.testing.assert_allclose(rgba[:, W // 2 + 8:].mean(axis=(0, 1)), (200, 40, 90), atol=4)
    # 16-bit values are scaled to 8 bits (v / 257), not clipped at 255
    np.testing.assert_allclose(decoded["png16"][..., 0], GRAY16 / 257.0, atol=4)


def test_summary_counts_skips_and_warnings(converted):
    out, summary = converted
    assert json.loads((out / "mixed_summary.json").read_text()) == summary
    kept = [i for i in EXPECTED if EXPECTED[i] is not None]
    assert summary["num_images"] == len(kept) == sum(summary["images_per_shard"])
    assert summary["classes"] == list(CLASSES)
    label_counts = np.bincount(sum((EXPECTED[i][1] for i in kept), []), minlength=4)
    assert summary["objects_per_class"] == {"cat": label_counts[1], "dog": label_counts[2],
                                            "person": label_counts[3]}
    assert summary["num_objects"] == label_counts.sum()
    assert summary["num_difficult"] == 1 and summary["difficult_per_class"]["dog"] == 1
    assert summary["num_truncated"] == 1 and summary["num_empty_images"] == 1
    assert summary["num_skipped"] == 2
    reasons = {s["image_id"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"truncated", "malformed"}
    assert reasons["truncated"].startswith("corrupt image") and "malformed XML" in reasons["malformed"]
    assert "malformed.xml" in reasons["malformed"]
    assert summary["warnings"] == {"box_clipped": 2, "box_inverted": 1, "box_outside": 1,
                                   "difficult_missing": 1, "size_mismatch": 1, "size_missing": 1,
                                   "truncated_missing": 1, "unknown_class": 1}
    assert any("sizediff.xml" in m for m in summary["warning_examples"]["size_mismatch"])
    assert summary["reencoded_images"] == {"JPEG/CMYK": 1, "JPEG/L": 1, "PNG/I;16": 1, "PNG/P": 1,
                                           "PNG/RGB": 1, "PNG/RGBA": 1}


def test_output_is_deterministic_for_any_worker_count(mixed_root, converted, tmp_path):
    out, summary = converted
    again = convert(mixed_root, tmp_path / "again", num_shards=3, num_workers=2, shuffle_seed=None)
    for first, second in zip(tfrecord_writer.finished_shards(out, "mixed"),
                             tfrecord_writer.finished_shards(tmp_path / "again", "mixed")):
        assert first.name == second.name and first.read_bytes() == second.read_bytes()
    assert again == summary


def test_unknown_classes_fail_with_names_and_files(mixed_root, tmp_path):
    with pytest.raises(convert_voc.ConversionError, match=r"'unicorn': 1 objects in 1 files: .*unknown\.xml"):
        convert(mixed_root, tmp_path, skip_unknown_classes=False)
    assert not list(tmp_path.iterdir())


def test_drop_empty_skips_images_without_objects(mixed_root, tmp_path):
    summary = convert(mixed_root, tmp_path, drop_empty=True)
    reasons = {s["image_id"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"truncated", "malformed", "empty"} and "no objects" in reasons["empty"]


def test_failed_run_leaves_no_finished_looking_shard(mixed_root, tmp_path, monkeypatch):
    complete = convert(mixed_root, tmp_path, num_shards=2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = convert_voc.convert_image
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_voc, "convert_image", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert(mixed_root, tmp_path, num_shards=4)
    # the previous complete output is untouched; nothing of the failed run is left
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    fresh = tmp_path / "fresh"
    calls.clear()
    with pytest.raises(RuntimeError):
        convert(mixed_root, fresh, num_shards=4)
    assert list(fresh.iterdir()) == []
    assert complete["num_shards"] == 2


def test_rerun_replaces_shards_of_another_count(mixed_root, tmp_path):
    convert(mixed_root, tmp_path, num_shards=3)
    (tmp_path / "other-00000-of-00001").write_bytes(b"x")  # another data set's shard stays
    summary = convert(mixed_root, tmp_path, num_shards=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["mixed-00000-of-00002", "mixed-00001-of-00002", "mixed_summary.json",
                     "other-00000-of-00001"]
    assert len(read_records(tfrecord_writer.finished_shards(tmp_path, "mixed"))) == summary["num_images"]


def test_missing_files_in_split_list_are_listed(tmp_path):
    items = {f"{i:03d}": (f"{i:03d}.jpg", good_jpeg(i), annotation_xml(f"{i:03d}.jpg", []))
             for i in range(3)}
    ids = list(items) + [f"m{i:02d}" for i in range(12)]
    make_root(tmp_path / "R", items, list_order=ids)
    (tmp_path / "R" / "JPEGImages" / "001.jpg").unlink()
    (tmp_path / "R" / "Annotations" / "002.xml").unlink()
    with pytest.raises(convert_voc.ConversionError) as error:
        convert(tmp_path / "R", tmp_path / "out")
    message = str(error.value)
    assert message.startswith("14 image ids have missing files")
    assert "001: no JPEGImages/001.jpg" in message and "002: no Annotations/002.xml" in message
    assert "m00: no Annotations/m00.xml, no JPEGImages/m00.jpg" in message
    assert "... and 4 more" in message and "m11" not in message


def test_duplicate_ids_across_roots_are_an_error(tmp_path):
    items = {"a": ("a.jpg", good_jpeg(0), annotation_xml("a.jpg", []))}
    roots = [make_root(tmp_path / "VOC2007", items), make_root(tmp_path / "VOC2012", items)]
    with pytest.raises(convert_voc.ConversionError, match="a in .*VOC2007 and .*VOC2012"):
        convert_voc.convert_voc(roots, tmp_path / "out", "dup", CLASSES)


def test_years_and_all_annotated_mode(tmp_path):
    def item(i):
        return (f"{i}.jpg", good_jpeg(0), annotation_xml(f"{i}.jpg", [obj_xml("cat", (1, 1, 4, 4))]))

    voc07 = make_root(tmp_path / "VOCdevkit" / "VOC2007", {i: item(i) for i in ("07c", "07a", "07t")},
                      list_order=["07c", "07a"])
    (voc07 / "ImageSets" / "Main" / "test.txt").write_text("07t\n")
    make_root(tmp_path / "VOCdevkit" / "VOC2012", {i: item(i) for i in ("12b", "12a")}, list_order=["12b"])
    roots = voc_entries.voc_roots(tmp_path / "VOCdevkit", ["2007", "2012"])
    assert roots == [tmp_path / "VOCdevkit" / "VOC2007", tmp_path / "VOCdevkit" / "VOC2012"]
    assert convert_voc.default_name(["2007", "2012"], [], ["trainval"], False) == "voc0712_trainval"
    split_entries = voc_entries.find_entries(roots, ["trainval"], all_annotated=False).entries
    assert [e.image_id for e in split_entries] == ["07c", "07a", "12b"]
    # every annotation, sorted per root, without VOC2007's test images
    found = voc_entries.find_entries(roots, ["trainval"], all_annotated=True)
    assert [e.image_id for e in found.entries] == ["07a", "07c", "12a", "12b"]
    assert found.sources[0]["excluded_test_ids"] == 1


def test_class_list_sources(tmp_path):
    assert voc_entries.load_class_names([" b", "a "]) == ("b", "a")
    (tmp_path / "classes.txt").write_text("circle\n square \n\ntriangle\n")
    from_file = voc_entries.load_class_names(classes_file=tmp_path / "classes.txt")
    assert from_file == ("circle", "square", "triangle")
    assert len(voc_entries.load_class_names()) == 20
    with pytest.raises(convert_voc.ConversionError, match="more than once: a"):
        voc_entries.load_class_names(["a", "b", "a"])


def test_clip_voc_box_cases():
    assert convert_voc.clip_voc_box((1, 1, 80, 60), 60, 80) == ((1, 1, 80, 60), None)
    assert convert_voc.clip_voc_box((5, 5, 5, 5), 60, 80) == ((5, 5, 5, 5), None)  # one pixel
    assert convert_voc.clip_voc_box((0, -3, 81, 70), 60, 80) == ((1, 1, 80, 60), "box_clipped")
    assert convert_voc.clip_voc_box((9, 5, 8, 10), 60, 80) == (None, "box_inverted")
    assert convert_voc.clip_voc_box((81, 5, 90, 10), 60, 80) == (None, "box_outside")


def test_xml_reader_tolerates_variants(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text("""<annotation><size><width>50</width><height>0</height></size>
      <object><name> horse </name><difficult>1.0</difficult><truncated>true</truncated>
        <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30.5</xmax><ymax>40</ymax></bndbox>
        <part><name>head</name>
          <bndbox><xmin>3</xmin><ymin>3</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></part>
      </object>
      <object><name>dog</name>
        <bndbox><xmin>a</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object>
      <object><difficult>0</difficult></object>
    </annotation>""")
    annotation = voc_xml.parse_voc_xml(path)
    assert annotation.width is None and annotation.height is None
    assert annotation.objects == (voc_xml.VocObject("horse", (1.0, 2.0, 30.5, 40.0), 1, 1, "Unspecified"),)
    kinds = [kind for kind, _ in annotation.notes]
    assert kinds == ["size_invalid", "box_invalid", "object_unnamed"]
    path.write_text("<notvoc/>")
    with pytest.raises(voc_xml.VocXmlError, match="x.xml: root element is <notvoc>"):
        voc_xml.parse_voc_xml(path)


def test_jpeg_without_end_marker_is_reencoded():
    # Fine noise: libjpeg has consumed every byte before it misses the marker, so Pillow decodes it.
    noise = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=90)
    assert data.endswith(b"\xff\xd9")
    cut = data[:-2]
    with pytest.raises(tf.errors.InvalidArgumentError):  # why it may not be kept as it is
        tf.io.decode_jpeg(cut)
    image = voc_image.load_rgb_jpeg(cut)
    assert image.reencoded == "JPEG/no-end-marker"
    assert tf.io.decode_jpeg(image.encoded).shape == (H, W, 3)
    progressive = encode(Image.fromarray(smooth_rgb(0)), "JPEG", progressive=True)
    structure = voc_image.jpeg_structure(progressive)
    assert structure.complete and structure.frame.marker == 0xC2
    assert (structure.frame.width, structure.frame.height) == (W, H)
    assert voc_image.load_rgb_jpeg(progressive).encoded == progressive
    with pytest.raises(voc_image.CorruptImageError):
        voc_image.load_rgb_jpeg(b"not an image")


def test_command_line(mixed_root, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(REPO / "dataset" / "convert_voc.py"), f"--voc_root={mixed_root}",
         "--split=trainval", "--classes=cat,dog,person", "--skip_unknown_classes",
         f"--output_directory={tmp_path}", "--num_shards=2", "--num_workers=2"],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "MIXED_trainval_summary.json").read_text())
    assert summary["num_images"] == 15 and summary["num_shards"] == 2
    assert "16/16" in result.stderr  # progress over every image with a readable XML
    assert len(read_records(tfrecord_writer.finished_shards(tmp_path, "MIXED_trainval"))) == 15


# ----------------------------------------------------------------------------- EXIF orientation

UPRIGHT_W, UPRIGHT_H = 80, 60
MARKER = (slice(8, 20), slice(10, 25))  # rows, columns of a red block in the upright picture
# The transposition that turns the upright picture into the stored one: the inverse of the one a
# viewer applies (5, 7 and the flips are their own inverses; 6 and 8 are each other's).
TO_STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
             6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}
RED = (230, 20, 20)


def upright_picture(width=UPRIGHT_W, height=UPRIGHT_H):
    pixels = np.full((height, width, 3), 200, np.uint8)
    pixels[MARKER] = RED
    return pixels


def marker_box(pixels):
    """VOC box (1-based inclusive) around the red block of `pixels`."""
    rows, cols = np.nonzero((pixels == RED).all(axis=-1))
    return (cols.min() + 1, rows.min() + 1, cols.max() + 1, rows.max() + 1)


def phone_photo(k, upright=None):
    """(stored JPEG with EXIF orientation k, stored pixels) of a picture that is `upright` when shown."""
    upright = upright_picture() if upright is None else upright
    stored = np.asarray(Image.fromarray(upright).transpose(TO_STORED[k]))
    exif = Image.Exif()
    exif[0x0112] = k
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif)
    # the test's own construction, checked against Pillow: shown upright, it is the upright picture
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), float)
    assert np.abs(shown - upright).mean() < 3
    return data, stored


def assert_marker_inside_box(record):
    pixels = tf.io.decode_jpeg(record["encoded"]).numpy().astype(int)
    height, width = pixels.shape[:2]
    assert (record["height"], record["width"]) == (height, width)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    (y0, x0, y1, x1), = np.round(record["boxes"] * [height, width, height, width]).astype(int)
    inside = np.zeros_like(red)
    inside[y0:y1, x0:x1] = True
    marker_area = (MARKER[0].stop - MARKER[0].start) * (MARKER[1].stop - MARKER[1].start)
    assert red.sum() >= 0.9 * marker_area, record["source_id"]
    assert (red & ~inside).sum() <= 0.02 * marker_area, record["source_id"]
    assert red[y0:y1, x0:x1].mean() >= 0.9, record["source_id"]


def exif_root(root, frame):
    """Photos with tags 2..8, annotated in the `frame` ("upright" or "stored") they are shown in."""
    items = {}
    for k in range(2, 9):
        data, stored = phone_photo(k)
        shown = upright_picture() if frame == "upright" else stored
        size = (shown.shape[1], shown.shape[0])
        items[f"o{k}"] = (f"o{k}.jpg", data,
                          annotation_xml(f"o{k}.jpg", [obj_xml("cat", marker_box(shown))], size=size))
    return make_root(root, items)


def records_by_id(out, name="mixed"):
    return {r["source_id"].decode(): r for r in read_records(tfrecord_writer.finished_shards(out, name))}


@pytest.mark.parametrize("policy", ["auto", "apply", "ignore"])
def test_phone_photos_annotated_upright(tmp_path, policy):
    summary = convert(exif_root(tmp_path / "R", "upright"), tmp_path / "out", exif_policy=policy)
    records = records_by_id(tmp_path / "out")
    # 5-8 swap width and height, so <size> tells the upright frame whatever the policy; for 2-4
    # (same width and height) only the policy can say.
    upright = {5, 6, 7, 8} | ({2, 3, 4} if policy == "apply" else set())
    for k in range(2, 9):
        record = records[f"o{k}"]
        if k in upright:
            assert_marker_inside_box(record)
            assert (record["height"], record["width"]) == (UPRIGHT_H, UPRIGHT_W)
        else:  # kept as stored: the upright box misses the flipped marker
            with pytest.raises(AssertionError):
                assert_marker_inside_box(record)
    exif = summary["exif_orientation"]
    assert exif["turned_upright_by"] == {"size": 4, **({"policy": 3} if policy == "apply" else {})}
    assert exif["kept_as_stored_by"] == ({} if policy == "apply" else {"policy": 3})
    assert exif["num_turned_upright"] == len(upright) and exif["num_kept_as_stored"] == 7 - len(upright)
    assert summary["exif_policy"] == policy
    assert summary["warnings"].get("exif_undecided", 0) == (3 if policy == "auto" else 0)
    assert "size_mismatch" not in summary["warnings"] and "box_clipped" not in summary["warnings"]
    assert summary["reencoded_images"] == {f"JPEG/RGB+EXIF{k}": 1 for k in sorted(upright)}


def test_phone_photos_annotated_on_the_stored_grid(tmp_path):
    root = exif_root(tmp_path / "R", "stored")
    summary = convert(root, tmp_path / "out", exif_policy="ignore")
    records = records_by_id(tmp_path / "out")
    for k in range(2, 9):
        assert_marker_inside_box(records[f"o{k}"])
        assert records[f"o{k}"]["encoded"] == (root / "JPEGImages" / f"o{k}.jpg").read_bytes()  # kept as is
    assert summary["exif_orientation"]["kept_as_stored_by"] == {"policy": 3, "size": 4}
    assert summary["reencoded_images"] == {} and summary["warnings"] == {}
    # --exif=apply turns 2-4 (size cannot tell) but 5-8 stay as their <size> says
    summary = convert(root, tmp_path / "apply", exif_policy="apply")
    assert summary["exif_orientation"]["kept_as_stored_by"] == {"size": 4}
    assert summary["exif_orientation"]["turned_upright_by"] == {"policy": 3}


def test_square_phone_photo_follows_the_policy(tmp_path):
    square = np.full((64, 64, 3), 200, np.uint8)
    square[MARKER] = RED
    data, _ = phone_photo(6, upright=square)
    xml = annotation_xml("sq.jpg", [obj_xml("cat", marker_box(square))], size=(64, 64))
    root = make_root(tmp_path / "R", {"sq": ("sq.jpg", data, xml)})
    auto = convert(root, tmp_path / "auto", exif_policy="auto")
    assert auto["warnings"] == {"exif_undecided": 1}
    assert "EXIF orientation 6" in auto["warning_examples"]["exif_undecided"][0]
    with pytest.raises(AssertionError):
        assert_marker_inside_box(records_by_id(tmp_path / "auto")["sq"])
    convert(root, tmp_path / "apply", exif_policy="apply")
    assert_marker_inside_box(records_by_id(tmp_path / "apply")["sq"])
    with pytest.raises(convert_voc.ConversionError, match="unknown EXIF policy"):
        convert(root, tmp_path / "bad", exif_policy="sideways")


# ----------------------------------------------------------------------------- missing files, order

def test_skip_missing_leaves_out_and_lists_the_ids(tmp_path):
    items = {f"{i:03d}": (f"{i:03d}.jpg", good_jpeg(i), annotation_xml(f"{i:03d}.jpg", [])) for i in range(4)}
    root = make_root(tmp_path / "R", items, list_order=list(items) + ["ghost"])
    (root / "JPEGImages" / "001.jpg").unlink()
    (root / "Annotations" / "002.xml").unlink()
    with pytest.raises(convert_voc.ConversionError, match=r"3 image ids have missing files \(pass --skip_missing"):
        convert(root, tmp_path / "out")
    summary = convert(root, tmp_path / "out", skip_missing=True)
    assert summary["num_images"] == 2 and summary["num_missing"] == 3 and summary["num_skipped"] == 3
    reasons = {s["image_id"]: s["reason"] for s in summary["skipped"]}
    assert reasons == {"001": "missing file: no JPEGImages/001.jpg",
                       "002": "missing file: no Annotations/002.xml",
                       "ghost": "missing file: no Annotations/ghost.xml, no JPEGImages/ghost.jpg"}
    assert sorted(records_by_id(tmp_path / "out")) == ["000", "003"]


def order_root(tmp_path, n=30):
    ids = [f"img{i:03d}" for i in range(n)]
    items = {i: (f"{i}.jpg", good_jpeg(k), annotation_xml(f"{i}.jpg", [obj_xml("cat", (1, 1, 9, 9))]))
             for k, i in enumerate(ids)}
    return make_root(tmp_path / "R", items), ids


def written_order(out, num_shards):
    """Record ids in the order they were written: round robin over the shards."""
    shards = [[r["source_id"].decode() for r in read_records([p])]
              for p in tfrecord_writer.finished_shards(out, "mixed")]
    assert len(shards) == num_shards
    return [shard[i] for i in range(max(map(len, shards))) for shard in shards if i < len(shard)]


def test_shuffled_order_is_seeded_and_deterministic(tmp_path):
    root, ids = order_root(tmp_path)
    first = convert(root, tmp_path / "a", num_shards=3)
    second = convert(root, tmp_path / "b", num_shards=3, num_workers=2)
    for a, b in zip(tfrecord_writer.finished_shards(tmp_path / "a", "mixed"),
                    tfrecord_writer.finished_shards(tmp_path / "b", "mixed")):
        assert a.read_bytes() == b.read_bytes()
    assert first == second and first["order"]["shuffled"] and first["order"]["seed"] == 0
    order = written_order(tmp_path / "a", 3)
    assert sorted(order) == ids and order != ids
    # the order is the ids sorted by a hash of seed and id, derived here independently
    assert order == sorted(ids, key=lambda i: hashlib.blake2b(f"0\0{i}".encode(), digest_size=16).digest())
    convert(root, tmp_path / "c", num_shards=3, shuffle_seed=1)
    other = written_order(tmp_path / "c", 3)
    assert sorted(other) == ids and other != order


def test_noshuffle_keeps_list_order(tmp_path):
    root, ids = order_root(tmp_path)
    summary = convert(root, tmp_path / "out", num_shards=4, shuffle_seed=None)
    assert written_order(tmp_path / "out", 4) == ids
    assert summary["order"] == {"shuffled": False}


def test_command_line_flags_for_missing_files_order_and_exif(tmp_path):
    data, _ = phone_photo(3)
    items = {"b": ("b.jpg", data, annotation_xml("b.jpg", [obj_xml("cat", marker_box(upright_picture()))])),
             "a": ("a.jpg", good_jpeg(0), annotation_xml("a.jpg", []))}
    root = make_root(tmp_path / "R", items, list_order=["b", "gone", "a"])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, str(REPO / "dataset" / "convert_voc.py"), f"--voc_root={root}",
               "--classes=cat", f"--output_directory={tmp_path / 'out'}", "--name=cli"]
    failed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode != 0 and "pass --skip_missing" in failed.stderr
    assert "Traceback" not in failed.stderr
    result = subprocess.run(command + ["--skip_missing", "--noshuffle", "--exif=apply"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "cli_summary.json").read_text())
    assert summary["num_missing"] == 1 and summary["skipped"][0]["image_id"] == "gone"
    assert summary["order"] == {"shuffled": False} and summary["exif_policy"] == "apply"
    records = read_records(tfrecord_writer.finished_shards(tmp_path / "out", "cli"))
    assert [r["source_id"].decode() for r in records] == ["b", "a"]
    assert_marker_inside_box(records[0])
