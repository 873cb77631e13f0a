import io
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # dataset/ holds scripts, not an installed package
    sys.path.insert(0, str(REPO))

from dataset import convert_voc  # noqa: E402
from dataset.make_shapes import SHAPE_CLASSES, make_shapes_dataset, render_scene  # noqa: E402

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
