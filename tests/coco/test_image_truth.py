"""ssd.coco.image_truth: a COCO annotations file's objects found by image file, boxes normalized."""

import json

import numpy as np
import pytest

from ssd.coco.image_truth import CocoAnnotationsError, read_image_truths
from ssd.errors import UserError


def _write(path, images, annotations=(), categories=({"id": 3, "name": "cat"},)):
    path.write_text(json.dumps({"images": list(images), "annotations": list(annotations),
                                "categories": list(categories)}))
    return path


def test_images_are_found_by_file_name_and_their_boxes_normalized_by_the_json_size(tmp_path):
    source = _write(tmp_path / "a.json",
                    [{"id": 1, "file_name": "train2017/x.jpg", "width": 200, "height": 100},
                     {"id": 2, "file_name": "y.png"}],
                    [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [20, 10, 50, 40]},
                     {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0, 0, 200, 100]},
                     {"id": 3, "image_id": 2, "category_id": 3, "bbox": [1, 2, 3, 4]}],
                    [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}])
    truths = read_image_truths(source)
    x, problem = truths.find(tmp_path / "photos" / "x.jpg")
    assert problem is None and x.size == (200, 100) and x.names == ("cat", "dog")
    # [x, y, w, h] = [20, 10, 50, 40] of 200 x 100 -> [10/100, 20/200, 50/100, 70/200]
    np.testing.assert_allclose(x.normalized_boxes(999, 999), [[0.1, 0.1, 0.5, 0.35], [0, 0, 1, 1]])
    boxes, labels, unknown = x.labeled(["bird", "cat"], 999, 999)
    np.testing.assert_allclose(boxes, [[0.1, 0.1, 0.5, 0.35]])
    assert labels.tolist() == [2] and unknown == ["dog"]
    # no size in the JSON: the picture's
    y, _ = truths.find("y.png")
    np.testing.assert_allclose(y.normalized_boxes(40, 10), [[2 / 40, 1 / 10, 6 / 40, 4 / 10]])
    assert truths.find("z.jpg") == (None, f"no image named z.jpg in {source}")


def test_a_file_name_in_several_folders_is_told_apart_by_the_path(tmp_path):
    source = _write(tmp_path / "a.json", [{"id": 1, "file_name": "day/x.jpg"}, {"id": 2, "file_name": "night/x.jpg"}],
                    [{"id": 9, "image_id": 2, "category_id": 3, "bbox": [1, 1, 1, 1]}])
    truths = read_image_truths(source)
    night, problem = truths.find("/data/night/x.jpg")
    assert problem is None and night.file_name == "night/x.jpg" and night.names == ("cat",)
    day, _ = truths.find("/data/day/x.jpg")
    assert day.file_name == "day/x.jpg" and day.boxes.shape == (0, 4)
    none, problem = truths.find("/data/x.jpg")
    assert none is None and problem == (f"several images named x.jpg in {source} (day/x.jpg, night/x.jpg), "
                                        f"none of them at this path")


@pytest.mark.parametrize("content, message", [
    ("not json", "not a JSON file"),
    ('{"images": [], "categories": []}', "has a list 'annotations'"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', r"image 0 \(id 1\) has no file_name"),
    ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "category_id": 4, '
     '"bbox": [0, 0, 1, 1]}], "categories": [{"id": 3}]}', "4"),
])
def test_a_bad_annotations_file_is_a_user_error_naming_it(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CocoAnnotationsError, match=message) as error:
        read_image_truths(path)
    assert str(path) in str(error.value) and isinstance(error.value, UserError)
    with pytest.raises(CocoAnnotationsError, match="not found"):
        read_image_truths(tmp_path / "missing.json")
