"""The one VOC XML reader: its rules, and the converter and the scorer agreeing on irregular files."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # dataset/ holds scripts, not an installed package
    sys.path.insert(0, str(REPO))

from dataset import convert_voc, voc_entries  # noqa: E402
from ssd.voc.image_ids import image_id_text, read_image_ids, repeated_ids  # noqa: E402
from ssd.voc.coords import normalized_to_voc  # noqa: E402
from ssd.voc.eval import evaluate_files, read_ground_truth  # noqa: E402
from ssd.voc.metric import VOCEvaluator  # noqa: E402
from ssd.voc.annotations import VocXmlError, parse_voc_xml, read_annotation  # noqa: E402

CLASSES = ["cat", "dog", "person"]
W, H = 80, 60


def obj(name, box, extra=""):
    coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name>{extra}<bndbox>{coords}</bndbox></object>"


SIZE = f"<size><width>{W}</width><height>{H}</height><depth>3</depth></size>"
# Each file departs from the VOC format in its own way; every box lies inside the W x H image
# (the converter clips boxes to the image, the metric does not: out of this test's scope).
IRREGULAR = {
    "floats": SIZE + obj("cat", ("45.7", "10.2", "70.5", "50.9"), "<difficult>0</difficult>"),
    "no_difficult": SIZE + obj("dog", (7, 8, 9, 10)) + obj("cat", (1, 1, 80, 60), "<difficult></difficult>"),
    "whitespace": SIZE + obj("  cat\n ", (3, 4, 30, 40), "<difficult>0</difficult>")
                  + obj("\tdog", (5, 5, 6, 6), "<difficult>1</difficult>"),
    "no_size": obj("person", (4, 4, 20, 20), "<difficult>1</difficult>"),
    "bad_size": "<size><width>80</width><height>zero</height></size>"
                + obj("person", (10, 10, 20, 20), "<difficult>0</difficult>"),
    "difficult_variants": SIZE + obj("cat", (1, 1, 10, 10), "<difficult>1.0</difficult>")
                          + obj("cat", (11, 1, 20, 10), "<difficult>true</difficult>")
                          + obj("cat", (21, 1, 30, 10), "<difficult>2</difficult>")
                          + obj("cat", (31, 1, 40, 10), "<difficult>yes?</difficult>")
                          + obj("cat", (41, 1, 50, 10), "<difficult> 0 </difficult>"),
    "dropped": SIZE + obj("dog", (50, 10, 20, 40)) + obj("dog", ("a", 1, 2, 3)) + obj("", (1, 1, 5, 5))
               + "<object><name>cat</name></object>" + obj("dog", ("nan", 1, 5, 5))
               + obj("dog", (2, 2, 12, 12), "<difficult>0</difficult>"),
    "parts": SIZE + "<object><name>person</name><difficult>0</difficult><bndbox><xmin>10</xmin>"
             "<ymin>5</ymin><xmax>60</xmax><ymax>55</ymax></bndbox><part><name>head</name><bndbox>"
             "<xmin>20</xmin><ymin>6</ymin><xmax>30</xmax><ymax>16</ymax></bndbox></part></object>",
    "nested_object": SIZE + obj("cat", (8, 8, 16, 16)) + "<extra>" + obj("dog", (1, 1, 3, 3)) + "</extra>",
    "unknown_class": SIZE + obj("zebra", (1, 1, 40, 40)) + obj("cat", (2, 3, 4, 5)),
    "empty": SIZE,
}
# (boxes, labels, difficult) as the rules in ssd/voc/annotations.py say, worked out by hand
EXPECTED = {
    "floats": ([(45.7, 10.2, 70.5, 50.9)], [1], [0]),
    "no_difficult": ([(7, 8, 9, 10), (1, 1, 80, 60)], [2, 1], [0, 0]),
    "whitespace": ([(3, 4, 30, 40), (5, 5, 6, 6)], [1, 2], [0, 1]),
    "no_size": ([(4, 4, 20, 20)], [3], [1]),
    "bad_size": ([(10, 10, 20, 20)], [3], [0]),
    "difficult_variants": ([(1, 1, 10, 10), (11, 1, 20, 10), (21, 1, 30, 10), (31, 1, 40, 10),
                            (41, 1, 50, 10)], [1] * 5, [1, 1, 1, 0, 0]),
    "dropped": ([(2, 2, 12, 12)], [2], [0]),
    "parts": ([(10, 5, 60, 55)], [3], [0]),
    "nested_object": ([(8, 8, 16, 16)], [1], [0]),
    "unknown_class": ([(2, 3, 4, 5)], [1], [0]),
    "empty": ([], [], []),
}


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "root"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    for image_id, body in IRREGULAR.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation>\n<filename>{image_id}.jpg</filename>\n{body}\n</annotation>\n")
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(buffer.getvalue())
    (root / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in IRREGULAR))
    return root


def converter_view(root):
    """What the converter puts into the records, per image, back in VOC pixels."""
    entries = voc_entries.find_entries([root], ["test"], all_annotated=False).entries
    options = convert_voc.ImageOptions({n: i for i, n in enumerate(CLASSES, start=1)}, skip_unknown_classes=True)
    view = {}
    for entry in entries:
        outcome = convert_voc.convert_image(entry, parse_voc_xml(entry.xml_path), options)
        image = outcome.image
        boxes = normalized_to_voc(np.array(image.boxes).reshape(-1, 4), image.height, image.width)
        view[entry.image_id] = (boxes, np.array(image.labels), np.array(image.difficult, bool))
    return view


def scorer_view(root):
    ids = read_image_ids(root / "ImageSets" / "Main" / "test.txt")
    (image, boxes, labels, difficult), unknown, notes = read_ground_truth(root / "Annotations", ids, CLASSES)
    assert unknown == {"zebra": 1}
    view = {i: (boxes[image == k], labels[image == k], difficult[image == k]) for k, i in enumerate(ids)}
    return view, notes


def test_converter_and_scorer_read_the_same_objects(voc_root):
    converted = converter_view(voc_root)
    scored, notes = scorer_view(voc_root)
    assert list(converted) == list(scored) == list(IRREGULAR)
    for image_id, (boxes, labels, difficult) in EXPECTED.items():
        expected_boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        for view in (converted, scored):
            got_boxes, got_labels, got_difficult = view[image_id]
            np.testing.assert_allclose(got_boxes, expected_boxes, rtol=0, atol=1e-9, err_msg=image_id)
            np.testing.assert_array_equal(got_labels, labels, err_msg=image_id)
            np.testing.assert_array_equal(got_difficult, np.array(difficult, bool), err_msg=image_id)
        # the scorer reads the annotation's own numbers, not a float round trip of them
        np.testing.assert_array_equal(scored[image_id][0], expected_boxes)
        np.testing.assert_array_equal(read_annotation(voc_root / "Annotations" / f"{image_id}.xml", CLASSES)[0],
                                      expected_boxes)
    # what changed the scored ground truth was counted; size notes are not the metric's business
    assert notes == {"box_invalid": 2, "box_inverted": 1, "box_missing": 1, "difficult_invalid": 1,
                     "difficult_missing": 5, "object_unnamed": 1}


def test_scoring_the_xml_equals_scoring_the_converted_records(voc_root, tmp_path):
    converted = converter_view(voc_root)
    rng = np.random.default_rng(1)
    evaluator = VOCEvaluator(CLASSES)
    for image_id, (boxes, labels, difficult) in converted.items():
        # detections: every ground truth shifted a little, plus a random box, on random classes
        dets = np.concatenate([boxes + rng.integers(-2, 3, boxes.shape), [[5, 5, 25, 25]]])
        classes = np.concatenate([labels, [rng.integers(1, 4)]])
        evaluator.add_image(image_id, boxes, labels, difficult, dets, np.round(rng.random(len(dets)), 1), classes)
    evaluator.write_results(tmp_path / "results")
    in_process = evaluator.result()
    from_files = evaluate_files(voc_root / "Annotations", voc_root / "ImageSets" / "Main" / "test.txt",
                                tmp_path / "results", "voc07", CLASSES)
    assert from_files["classes"] == in_process["classes"]
    assert from_files["num_positives"] == in_process["num_positives"] == {"cat": 7, "dog": 2, "person": 2}
    assert from_files["unknown_classes"] == {"zebra": 1}


def test_reader_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text("<annotation><object>")
    with pytest.raises(VocXmlError, match=r"broken\.xml: malformed XML"):
        read_annotation(path, CLASSES)
    with pytest.raises(VocXmlError, match=r"absent\.xml: cannot read"):
        read_annotation(tmp_path / "absent.xml", CLASSES)
    path.write_text("<annotations/>")
    with pytest.raises(VocXmlError, match=r"broken\.xml: root element is <annotations>"):
        parse_voc_xml(path)


def test_split_lists_and_image_id_text(tmp_path):
    path = tmp_path / "aeroplane_test.txt"
    path.write_text("000001 -1\n\n  000002  1 \n000001 0\n")
    assert read_image_ids(path) == ["000001", "000002", "000001"]
    assert repeated_ids(read_image_ids(path)) == ["000001"]
    with pytest.raises(FileNotFoundError, match="none.txt"):
        read_image_ids(tmp_path / "none.txt")
    assert [image_id_text(v) for v in (b"000001", "000002", 3, np.array(b"x"), np.bytes_(b"y"), np.str_("z"))] \
        == ["000001", "000002", "3", "x", "y", "z"]
    with pytest.raises(convert_voc.ConversionError, match="no split list .*val.txt"):
        voc_entries.read_split_ids(tmp_path, "val")
