import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # dataset/ holds scripts, not an installed package
    sys.path.insert(0, str(REPO))

from dataset import convert_coco, convert_voc, tfrecord_writer  # noqa: E402
from dataset.make_shapes import (COCO_CATEGORY_IDS, SHAPE_CLASSES, coco_bbox,  # noqa: E402
                                 make_shapes_dataset, render_scene)
from ssd.data import records  # noqa: E402

pytestmark = pytest.mark.slow  # trains a model or starts processes


SMALL = dict(image_size=(96, 128))


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_xml(path: Path):
    root = ET.parse(path).getroot()
    size = root.find("size")
    objects = [(o.findtext("name"), int(o.findtext("truncated")), int(o.findtext("difficult")),
                tuple(int(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")))
               for o in root.findall("object")]
    return int(size.findtext("width")), int(size.findtext("height")), objects


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "SHAPES"
    make_shapes_dataset(root, num_trainval=8, num_test=4, seed=3, **SMALL)
    return root


def test_same_seed_gives_identical_files(shapes_root, tmp_path):
    again = tmp_path / "again" / shapes_root.name  # <folder> holds the directory name
    progress = io.StringIO()
    make_shapes_dataset(again, num_trainval=8, num_test=4, seed=3, progress_stream=progress, **SMALL)
    assert tree_files(again) == tree_files(shapes_root)  # progress changes nothing written
    assert progress.getvalue().splitlines()[-1].startswith("shapes 12/12 (100.0%)")
    make_shapes_dataset(tmp_path / "other", num_trainval=8, num_test=4, seed=4, **SMALL)
    other = tree_files(tmp_path / "other")
    assert other["JPEGImages/000001.jpg"] != tree_files(shapes_root)["JPEGImages/000001.jpg"]


def test_tree_holds_exactly_the_listed_images(shapes_root):
    main = shapes_root / "ImageSets" / "Main"
    trainval = main.joinpath("trainval.txt").read_text().split()
    test = main.joinpath("test.txt").read_text().split()
    assert trainval == [f"{i:06d}" for i in range(1, 9)] and test == [f"{i:06d}" for i in range(9, 13)]
    expected = {f"Annotations/{i}.xml" for i in trainval + test} | \
        {f"JPEGImages/{i}.jpg" for i in trainval + test} | \
        {"ImageSets/Main/trainval.txt", "ImageSets/Main/test.txt"}
    assert set(tree_files(shapes_root)) == expected


def test_xml_matches_images_and_boxes_lie_inside(shapes_root):
    names = set()
    for xml_path in sorted((shapes_root / "Annotations").glob("*.xml")):
        annotation = ET.parse(xml_path).getroot()
        assert annotation.findtext("filename") == xml_path.stem + ".jpg"
        assert annotation.findtext("size/depth") == "3" and annotation.findtext("segmented") == "0"
        width, height, objects = read_xml(xml_path)
        image = Image.open(shapes_root / "JPEGImages" / f"{xml_path.stem}.jpg")
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (width, height)
        assert 96 <= max(width, height) <= 128
        assert 1 <= len(objects) <= 6
        for name, truncated, difficult, (xmin, ymin, xmax, ymax) in objects:
            assert name in SHAPE_CLASSES and truncated in (0, 1) and difficult in (0, 1)
            assert 1 <= xmin < xmax <= width and 1 <= ymin < ymax <= height
            names.add(name)
    assert names == set(SHAPE_CLASSES)


def most_common_colour(image):
    colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    return colours[np.argmax(counts)]


def pixel_box(mask):
    """1-based inclusive box of the True pixels."""
    ys, xs = np.nonzero(mask)
    return xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("seed", range(6))
def test_single_shape_box_is_the_tight_box_of_its_pixels(seed):
    rng = np.random.default_rng(seed)
    scene = render_scene(rng, 150, 200, objects_per_image=(1, 1), backgrounds=("plain",), pixel_noise=False)
    (obj,) = scene.objects
    shape = np.any(scene.image != most_common_colour(scene.image), axis=-1)
    assert pixel_box(shape) == obj.box


def test_several_shapes_are_tightly_boxed_on_a_plain_background():
    for seed in range(10):
        scene = render_scene(np.random.default_rng(seed), 180, 240, objects_per_image=(4, 6),
                             backgrounds=("plain",), pixel_noise=False)
        shape = np.any(scene.image != most_common_colour(scene.image), axis=-1)
        covered = np.zeros_like(shape)
        for obj in scene.objects:
            xmin, ymin, xmax, ymax = obj.box
            inside = shape[ymin - 1:ymax, xmin - 1:xmax]
            # tight: every edge of the box touches a drawn pixel
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[ymin - 1:ymax, xmin - 1:xmax] = True
        assert not (shape & ~covered).any()  # every drawn pixel belongs to some box


def test_written_jpeg_matches_the_box(tmp_path):
    make_shapes_dataset(tmp_path, 5, 0, seed=1, image_size=(150, 200), objects_per_image=(1, 1),
                        backgrounds=("plain",), pixel_noise=False)
    for image_id in range(1, 6):
        _, _, [(_, _, _, box)] = read_xml(tmp_path / "Annotations" / f"{image_id:06d}.xml")
        pixels = np.asarray(Image.open(tmp_path / "JPEGImages" / f"{image_id:06d}.jpg"), float)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        background = np.median(border, axis=0)
        shape = np.abs(pixels - background).max(axis=-1) > 40
        np.testing.assert_allclose(pixel_box(shape), box, atol=2)


def test_occlusion_and_truncation_rules():
    objects = []
    for seed in range(80):
        rng = np.random.default_rng(seed)
        height, width = (150, 200) if seed % 2 else (200, 133)
        scene = render_scene(rng, height, width)
        short = min(height, width)
        for obj in scene.objects:
            objects.append(obj)
            assert obj.visible_fraction >= 0.25
            assert obj.difficult == int(obj.visible_fraction < 0.4)
            side = max(obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]) + 1
            assert side <= 0.85 * short
            if obj.visible_fraction == 1.0:
                assert side >= 0.05 * short
    assert sum(o.difficult for o in objects) >= 1 and sum(o.truncated for o in objects) >= 5
    assert 0.2 < np.mean([o.visible_fraction < 1 for o in objects]) < 0.8


def test_converter_accepts_the_tree_without_skips_or_warnings(shapes_root, tmp_path):
    summary = convert_voc.convert_voc([shapes_root], tmp_path, "shapes", SHAPE_CLASSES,
                                      splits=["trainval", "test"], progress_stream=io.StringIO())
    assert summary["num_images"] == 12 and summary["num_skipped"] == 0
    assert summary["warnings"] == {} and summary["reencoded_images"] == {}
    xml_objects = [obj for path in (shapes_root / "Annotations").glob("*.xml") for obj in read_xml(path)[2]]
    assert summary["num_objects"] == len(xml_objects)
    assert summary["num_difficult"] == sum(obj[2] for obj in xml_objects)


def test_refuses_to_write_into_a_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_shapes_dataset(tmp_path, 1, 1, seed=0, **SMALL)
    root = tmp_path / "tree"
    make_shapes_dataset(root, 3, 1, seed=0, **SMALL)
    make_shapes_dataset(root, 1, 1, seed=0, overwrite=True, **SMALL)
    assert len(list((root / "JPEGImages").iterdir())) == 2


# ----------------------------------------------------------------------------- COCO format

@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_coco") / "SHAPES"
    make_shapes_dataset(root, num_trainval=8, num_test=4, seed=3, output_format="coco", **SMALL)
    return root


def test_coco_bbox_is_the_continuous_pixel_range_of_the_voc_box():
    assert coco_bbox((1, 1, 10, 20)) == [0.0, 0.0, 10.0, 20.0]   # pixels 1..10 span [0, 10]
    assert coco_bbox((5, 7, 5, 7)) == [4.0, 6.0, 1.0, 1.0]       # a single pixel


def test_visible_pixels_are_the_objects_mask():
    scene = render_scene(np.random.default_rng(2), 150, 200, objects_per_image=(4, 6))
    assert len(scene.objects) >= 2
    for index, obj in enumerate(scene.objects):
        xmin, ymin, xmax, ymax = obj.box
        assert obj.visible_pixels == np.sum(scene.owner == index) <= (xmax - xmin + 1) * (ymax - ymin + 1)


def test_coco_tree_has_the_voc_images_and_boxes(shapes_root, coco_root):
    files = tree_files(coco_root)
    ids = [f"{i:06d}" for i in range(1, 13)]
    assert set(files) == {"annotations/instances_trainval.json", "annotations/instances_test.json"} | \
        {f"images/{i}.jpg" for i in ids}
    voc_files = tree_files(shapes_root)
    assert all(files[f"images/{i}.jpg"] == voc_files[f"JPEGImages/{i}.jpg"] for i in ids)
    sizes = set()
    for split, split_ids in (("trainval", ids[:8]), ("test", ids[8:])):
        data = json.loads(files[f"annotations/instances_{split}.json"])
        assert [c["id"] for c in data["categories"]] == [11, 3, 20, 7]  # sparse, out of id order
        assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
        assert [image["id"] for image in data["images"]] == [int(i) for i in split_ids]
        by_image = {}
        for annotation in data["annotations"]:
            by_image.setdefault(annotation["image_id"], []).append(annotation)
        for image in data["images"]:
            xml_name = image["file_name"].replace(".jpg", ".xml")
            width, height, objects = read_xml(shapes_root / "Annotations" / xml_name)
            assert (image["width"], image["height"]) == (width, height)
            sizes.add((width, height))
            annotations = by_image[image["id"]]
            assert len(annotations) == len(objects)
            for annotation, (name, _, _, (xmin, ymin, xmax, ymax)) in zip(annotations, objects):
                assert annotation["category_id"] == COCO_CATEGORY_IDS[name] and annotation["iscrowd"] == 0
                assert annotation["bbox"] == [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
                assert 0 < annotation["area"] <= annotation["bbox"][2] * annotation["bbox"][3]
    assert len(sizes) > 3  # the images differ in size, so a pixel-scale mix-up shows


def read_all(directory, name):
    result = {}
    shards = [str(p) for p in tfrecord_writer.finished_shards(directory, name)]
    for serialized in tf.data.TFRecordDataset(shards):
        parsed = {k: v.numpy() for k, v in records.parse_example(serialized).items()}
        result[parsed["source_id"].decode()] = parsed
    return result


def test_both_formats_convert_to_the_same_records(shapes_root, coco_root, tmp_path):
    convert_voc.convert_voc([shapes_root], tmp_path, "voc", SHAPE_CLASSES, splits=["trainval", "test"],
                            progress_stream=io.StringIO())
    annotations = [coco_root / "annotations" / f"instances_{s}.json" for s in ("trainval", "test")]
    summary = convert_coco.convert_coco(annotations, [coco_root / "images"] * 2, tmp_path, "coco",
                                        progress_stream=io.StringIO())
    assert summary["warnings"] == {} and summary["num_skipped"] == 0 and summary["reencoded_images"] == {}
    voc, coco = read_all(tmp_path, "voc"), read_all(tmp_path, "coco")
    assert sorted(coco, key=int) == [str(int(i)) for i in sorted(voc)]
    for voc_id, voc_record in voc.items():
        coco_record = coco[str(int(voc_id))]
        assert coco_record["encoded"] == voc_record["encoded"]
        assert (coco_record["height"], coco_record["width"]) == (voc_record["height"], voc_record["width"])
        np.testing.assert_array_equal(coco_record["labels"], voc_record["labels"])
        np.testing.assert_allclose(coco_record["boxes"], voc_record["boxes"], atol=1e-6)
        assert not coco_record["is_crowd"].any() and (coco_record["area"] > 0).all()
        assert (voc_record["area"] == -1).all()  # VOC records carry no area
    voc_summary = json.loads((tmp_path / "voc_summary.json").read_text())
    assert summary["objects_per_class"] == voc_summary["objects_per_class"]


def test_coco_tree_refuses_strangers_and_is_replaced_with_overwrite(tmp_path):
    root = tmp_path / "coco"
    make_shapes_dataset(root, 2, 1, seed=0, output_format="coco", **SMALL)
    with pytest.raises(FileExistsError, match="not empty"):
        make_shapes_dataset(root, 1, 1, seed=0, output_format="coco", **SMALL)
    make_shapes_dataset(root, 1, 1, seed=0, output_format="coco", overwrite=True, **SMALL)
    assert len(list((root / "images").iterdir())) == 2
    (root / "Annotations").mkdir()
    with pytest.raises(FileExistsError, match="not a COCO tree: Annotations"):
        make_shapes_dataset(root, 1, 1, seed=0, output_format="coco", overwrite=True, **SMALL)
    with pytest.raises(ValueError, match="unknown format 'yolo'"):
        make_shapes_dataset(tmp_path / "y", 1, 1, seed=0, output_format="yolo")


def test_command_line_writes_the_coco_format(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "dataset" / "make_shapes.py"),
                             f"--output_dir={tmp_path / 'c'}", "--format=coco", "--num_trainval=1",
                             "--num_test=1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert set(tree_files(tmp_path / "c")) == {"annotations/instances_trainval.json",
                                                "annotations/instances_test.json",
                                                "images/000001.jpg", "images/000002.jpg"}
