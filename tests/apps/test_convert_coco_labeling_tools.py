"""COCO files as labeling tools write them (Roboflow, CVAT, Label Studio), made here in their shapes."""

import json
import logging
from pathlib import Path

import pytest

from dataset.coco_categories import CategorySelectionError, from_reference, select
from dataset.tfrecord_writer import ConversionError
from ssd.coco.categories import Category, read_category_map
from tests.apps.test_convert_coco import H, W, ann, convert, jpeg, records_by_id, write_set


def _numbered(annotations):
    for number, annotation in enumerate(annotations, 1):
        annotation["id"] = number
    return annotations


# ----------------------------------------------------------------------------- Roboflow

def roboflow_categories(*names, data_set="potholes"):
    """Roboflow's shape: the data set first (id 0, supercategory "none"), then the classes."""
    return ([{"id": 0, "name": data_set, "supercategory": "none"}]
            + [{"id": i, "name": name, "supercategory": data_set} for i, name in enumerate(names, 1)])


def test_one_class_roboflow_export_converts_and_its_data_set_entry_takes_no_label(tmp_path):
    annotations = _numbered([ann(0, 1, [10, 10, 20, 20]),
                             ann(1, 1, [-0.4, 5, 30, 20]),          # 0.4 px past the left edge
                             ann(1, 1, [50, 40.5, 30.3, 20])])       # 0.3 px right, 0.5 px bottom
    path, images = write_set(tmp_path / "export", [(0, "a.jpg", jpeg(0), (W, H)), (1, "b.jpg", jpeg(1), (W, H))],
                             annotations, roboflow_categories("pothole", data_set="pothole"))
    summary = convert(path, images, tmp_path / "out", name="potholes")
    assert summary["classes"] == ["pothole"]
    assert read_category_map(tmp_path / "out" / "potholes_categories.json") == [Category(1, 1, "pothole")]
    (note,) = summary["category_notes"]
    assert "category id 0 'pothole'" in note and "repeats the name of category id 1" in note
    # sub-pixel spills: clipped, counted once in the summary, not warned about box by box
    assert summary["corrected_without_warning"] == {"box_clipped_subpixel": 2}
    assert "box_clipped" not in summary["warnings"]
    record = records_by_id(tmp_path / "out", "potholes")["1"]
    assert record["labels"].tolist() == [1, 1]
    assert record["boxes"].min() >= 0.0 and record["boxes"].max() <= 1.0


def test_roboflow_data_set_entry_is_left_out_as_the_supercategory_of_the_others(tmp_path):
    annotations = _numbered([ann(0, 1, [10, 10, 20, 20]), ann(0, 2, [40, 10, 20, 20])])
    path, images = write_set(tmp_path / "export", [(0, "a.jpg", jpeg(0), (W, H))], annotations,
                             roboflow_categories("apple", "banana", "cherry", data_set="fruits"))
    summary = convert(path, images, tmp_path / "out", name="fruits")
    assert summary["classes"] == ["apple", "banana", "cherry"]  # cherry, unused, keeps its place
    notes = "\n".join(summary["category_notes"])
    assert "category id 0 'fruits'" in notes and "supercategory of all the others" in notes
    assert "category id 3 'cherry': no annotation uses it (kept as label 3)" in notes


def test_a_name_clash_between_used_categories_is_an_error_naming_both_ids():
    categories = [{"id": 4, "name": "car"}, {"id": 7, "name": "car"}]
    with pytest.raises(CategorySelectionError, match=r"'car' is listed twice \(ids 4 and 7\)"):
        select(categories, {4, 7}, "instances.json")
    # used once, the unused twin is left out
    assert select(categories, {7}, "x").categories == [Category(1, 7, "car")]
    # an unused category that repeats nothing and is no supercategory stays
    assert [c.name for c in select([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], {1}, "x").categories] == ["a", "b"]


# ----------------------------------------------------------------------------- splits of one export

def test_categories_from_gives_a_split_the_training_split_class_list(tmp_path):
    train = _numbered([ann(0, 1, [10, 10, 20, 20]), ann(0, 2, [40, 10, 20, 20]), ann(1, 3, [5, 5, 10, 10])])
    train_path, train_images = write_set(tmp_path / "train", [(0, "a.jpg", jpeg(0), (W, H)),
                                                               (1, "b.jpg", jpeg(1), (W, H))],
                                         train, roboflow_categories("apple", "banana", "cherry", data_set="fruits"))
    convert(train_path, train_images, tmp_path / "out", name="train")
    # the validation split: banana absent, the categories listed in another order under other ids
    val_categories = [{"id": 9, "name": "cherry"}, {"id": 5, "name": "apple"}, {"id": 6, "name": "banana"}]
    val = _numbered([ann(0, 9, [10, 10, 20, 20]), ann(0, 5, [40, 10, 20, 20])])
    val_path, val_images = write_set(tmp_path / "val", [(0, "c.jpg", jpeg(2), (W, H))], val, val_categories)

    alone = convert(val_path, val_images, tmp_path / "alone", name="val")
    assert alone["classes"] == ["cherry", "apple", "banana"]  # what the split alone would give
    for reference in (train_path, tmp_path / "out" / "train_categories.json"):
        summary = convert(val_path, val_images, tmp_path / "val_out", name="val", categories_from=reference)
        assert summary["classes"] == ["apple", "banana", "cherry"]
        assert read_category_map(tmp_path / "val_out" / "val_categories.json") == [
            Category(1, 5, "apple"), Category(2, 6, "banana"), Category(3, 9, "cherry")]
        labels = records_by_id(tmp_path / "val_out", "val")["0"]["labels"]
        assert sorted(labels.tolist()) == [1, 3]  # apple and cherry, by the training split's labels

    with pytest.raises(ConversionError, match=r"category id 9 'durian' is used by annotations but is not "
                                              r"among the classes of .*train_categories.json"):
        write_set(tmp_path / "bad", [(0, "c.jpg", jpeg(2), (W, H))], val,
                  [{"id": 9, "name": "durian"}, {"id": 5, "name": "apple"}])
        convert(tmp_path / "bad" / "instances.json", tmp_path / "bad" / "images", tmp_path / "bad_out",
                name="bad", categories_from=tmp_path / "out" / "train_categories.json")
    assert not (tmp_path / "bad_out").exists() or not list((tmp_path / "bad_out").iterdir())


def test_from_reference_keeps_the_reference_id_of_a_class_the_file_does_not_list():
    reference = [Category(1, 11, "a"), Category(2, 12, "b")]
    selection = from_reference([{"id": 3, "name": "a"}, {"id": 0, "name": "set"}], {3}, reference, "val", "train")
    assert selection.categories == [Category(1, 3, "a"), Category(2, 12, "b")]
    assert "category id 0 'set', which no annotation uses, is not among the classes of train" in selection.notes[0]


# ----------------------------------------------------------------------------- CVAT: masks as crowd

def cvat_export(directory: Path, crowd_flags):
    """CVAT's shape: objects drawn as masks come with iscrowd 1 and an RLE segmentation."""
    rle = {"counts": [0, 10, 50], "size": [H, W]}
    annotations = _numbered([ann(0, 1, [5 + 10 * i, 5, 8, 8], iscrowd=flag, segmentation=rle if flag else [])
                             for i, flag in enumerate(crowd_flags)])
    return write_set(directory, [(0, "frame_000000.jpg", jpeg(0), (W, H))], annotations,
                     [{"id": 1, "name": "car", "supercategory": ""}])


def test_an_export_of_crowd_regions_only_is_refused_before_anything_is_written(tmp_path):
    path, images = cvat_export(tmp_path / "cvat", [1, 1, 1])
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="no training target left: 3 of the 3 annotations are crowd "
                                              ".*--crowd=objects.*--evaluation_only"):
        convert(path, images, out, name="cvat")
    assert not out.exists() or not list(out.iterdir())

    as_objects = convert(path, images, out, name="cvat", crowd="objects")
    assert (as_objects["num_objects"], as_objects["num_crowd"], as_objects["crowd"]) == (3, 0, "objects")
    record = records_by_id(out, "cvat")["0"]
    assert record["labels"].tolist() == [1, 1, 1] and not record["is_crowd"].any()

    evaluated = convert(path, images, tmp_path / "eval", name="cvat", evaluation_only=True)
    assert evaluated["num_crowd"] == 3


def test_mostly_crowd_is_said_loudly_with_the_flag(tmp_path, caplog):
    path, images = cvat_export(tmp_path / "cvat", [1, 1, 0])
    with caplog.at_level(logging.WARNING):
        summary = convert(path, images, tmp_path / "out", name="cvat")
    assert summary["num_crowd"] == 2
    assert any("MOST ANNOTATIONS ARE CROWD REGIONS" in r.getMessage() and "--crowd=objects" in r.getMessage()
               for r in caplog.records)


# ----------------------------------------------------------------------------- a failed run

def test_a_failed_conversion_leaves_the_finished_one_untouched(tmp_path):
    annotations = _numbered([ann(0, 1, [10, 10, 20, 20])])
    path, images = write_set(tmp_path / "first", [(0, "a.jpg", jpeg(0), (W, H))], annotations,
                             [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}])
    out = tmp_path / "out"
    convert(path, images, out, name="pets")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # the same name, other categories, and no image that can be decoded
    broken = jpeg(1)
    path, images = write_set(tmp_path / "second", [(0, "a.jpg", broken[:len(broken) // 3], (W, H))],
                             annotations, [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}])
    with pytest.raises(ConversionError, match="no image could be converted"):
        convert(path, images, out, name="pets")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ----------------------------------------------------------------------------- Label Studio, CVAT paths

def test_file_names_with_folders_ids_from_0_and_images_without_annotations(tmp_path):
    root = tmp_path / "export"
    (root / "images" / "batch1").mkdir(parents=True)
    (root / "images" / "batch1" / "x.jpg").write_bytes(jpeg(0))
    (root / "images" / "y.jpg").write_bytes(jpeg(1))
    (root / "images" / "z.jpg").write_bytes(jpeg(2))
    data = {"images": [{"id": 0, "file_name": "images/batch1/x.jpg", "width": W, "height": H},
                       {"id": 1, "file_name": "images/y.jpg", "width": W, "height": H},
                       # Label Studio's upload path: found under the export's root by its name
                       {"id": 2, "file_name": "/data/upload/3/z.jpg", "width": W, "height": H}],
            "annotations": _numbered([ann(0, 0, [10, 10, 20, 20]), ann(2, 1, [5, 5, 30, 30])]),
            "categories": [{"id": 0, "name": "person"}, {"id": 1, "name": "bike"}]}
    path = root / "result.json"
    path.write_text(json.dumps(data))
    (root / "images" / "z.jpg").rename(root / "z.jpg")
    summary = convert(path, root, tmp_path / "out", name="ls")
    assert summary["num_images"] == 3 and summary["num_skipped"] == 0
    assert summary["classes"] == ["person", "bike"]
    converted = records_by_id(tmp_path / "out", "ls")
    assert [converted[i]["labels"].tolist() for i in ("0", "1", "2")] == [[1], [], [2]]
