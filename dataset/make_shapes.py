r"""A synthetic PASCAL VOC- or COCO-format data set of coloured shapes on textured backgrounds.

  python dataset/make_shapes.py --output_dir=/tmp/shapes --num_trainval=400 --num_test=100 --seed=0

writes `Annotations/*.xml`, `JPEGImages/*.jpg` and `ImageSets/Main/{trainval,test}.txt` (nothing
else), ready for `dataset/convert_voc.py --voc_root=... --classes=circle,square,triangle,star`.
With `--format=coco` the same images go to `images/*.jpg` and their annotations to
`annotations/instances_{trainval,test}.json`, ready for `dataset/convert_coco.py`. The COCO files
use sparse category ids listed out of id order (COCO_CATEGORY_IDS), so that a converter mixing
ids and labels fails visibly; labels in list order are the VOC labels. Image ids are the integer
of the VOC id (000007 -> 7), `bbox` is the VOC box as continuous pixels [xmin - 1, ymin - 1,
xmax - xmin + 1, ymax - ymin + 1], `area` the object's visible pixel count (its mask, as COCO's
segmentation area), iscrowd 0; no segmentation is written.
The output depends only on the arguments: image i is drawn from its own generator seeded with
(seed, i).

Each image (long side 320-500 px by default, aspect 2:3 to 1:1, landscape or portrait, JPEG
quality 90) has a noise, gradient or stripe background and 1-6 shapes of the classes
circle, square, triangle, star (labels 1-4 in this order), mildly stretched and rotated, sized
from 8% to 70% of the shorter image side (log-normal, median ~24%), in colours chosen to stand out
from what lies beneath them. Shapes drawn later cover earlier ones. Annotation follows VOC's
rules:
  * the box is the tight box of the object's *visible* pixels (computed from the drawn masks, not
    from the geometry), in 1-based inclusive pixel coordinates;
  * truncated=1 when part of the shape lies outside the image (at most half of it may);
  * difficult=1 when less than 40% of the shape is visible (more than 60% hidden by later shapes
    and the border together). Placements that would leave any shape less than 25% visible are
    rejected, so every drawn shape is annotated and none is an unrecognisable sliver.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence, TextIO

if __package__ in (None, ""):  # run as `python dataset/make_shapes.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssd import cli  # first: keeps TensorFlow's start-up lines quiet, whoever imports it

cli.quiet_tensorflow_startup()

import numpy as np
from absl import app, flags
from PIL import Image

from dataset.shapes_scene import BACKGROUNDS, SHAPE_CLASSES, ShapeObject, render_scene
from ssd.coco.coords import normalized_to_coco
from ssd.progress import Progress
from ssd.voc.coords import voc_to_normalized

# COCO category ids of the classes (listed in SHAPE_CLASSES order): sparse and not increasing.
COCO_CATEGORY_IDS = {"circle": 11, "square": 3, "triangle": 20, "star": 7}
FORMATS = ("voc", "coco")
_OWNED = {"voc": ("Annotations", "JPEGImages", "ImageSets"), "coco": ("annotations", "images")}


# ----------------------------------------------------------------------------- files

def voc_annotation_xml(folder: str, filename: str, height: int, width: int,
                       objects: Sequence[ShapeObject]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "Synthetic Shapes Database"
    ET.SubElement(source, "annotation").text = "make_shapes"
    ET.SubElement(source, "image").text = "synthetic"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = obj.name
        ET.SubElement(element, "pose").text = "Unspecified"
        ET.SubElement(element, "truncated").text = str(obj.truncated)
        ET.SubElement(element, "difficult").text = str(obj.difficult)
        bndbox = ET.SubElement(element, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def _image_size(rng: np.random.Generator, image_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width): long side in `image_size`, aspect 2:3 to 1:1, landscape 70% of the time."""
    long_side = int(rng.integers(image_size[0], image_size[1] + 1))
    short_side = int(round(long_side * rng.uniform(2 / 3, 1.0)))
    return (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)


def coco_bbox(voc_box: Sequence[int]) -> list[float]:
    """A VOC box (1-based inclusive pixels) as a COCO bbox [x, y, width, height] in continuous pixels.

    Composes the two stated conversions with a 1 x 1 "image", which leaves pixels unscaled (exact).
    """
    corners = voc_to_normalized(np.array([voc_box], np.float64), 1.0, 1.0)
    return [float(v) for v in normalized_to_coco(corners, 1.0, 1.0)[0]]


def coco_categories() -> list[dict]:
    return [{"id": COCO_CATEGORY_IDS[name], "name": name, "supercategory": "shape"} for name in SHAPE_CLASSES]


def coco_annotation_json(images: Sequence[dict], objects: Sequence[tuple[int, ShapeObject]]) -> dict:
    """The COCO instances file of `images` and their (image id, object) pairs."""
    annotations = [{"id": number, "image_id": image_id, "category_id": COCO_CATEGORY_IDS[obj.name],
                    "bbox": coco_bbox(obj.box), "area": float(obj.visible_pixels), "iscrowd": 0}
                   for number, (image_id, obj) in enumerate(objects, 1)]
    return {"info": {"description": "Synthetic Shapes Database (make_shapes)"}, "licenses": [],
            "images": list(images), "annotations": annotations, "categories": coco_categories()}


def _prepare_root(root: Path, output_format: str, overwrite: bool) -> None:
    owned = _OWNED[output_format]
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty (pass overwrite=True / --overwrite to replace it)")
        strangers = sorted(p.name for p in root.iterdir() if p.name not in owned)
        if strangers:
            raise FileExistsError(f"{root} holds files that are not a {output_format.upper()} tree: "
                                  f"{', '.join(strangers[:5])}")
        for name in owned:
            shutil.rmtree(root / name, ignore_errors=True)
    subdirectories = ("Annotations", "JPEGImages", "ImageSets/Main") if output_format == "voc" else owned
    for sub in subdirectories:
        (root / sub).mkdir(parents=True, exist_ok=True)


def make_shapes_dataset(root: str | Path, num_trainval: int, num_test: int, seed: int, *,
                        image_size: tuple[int, int] = (320, 500),
                        objects_per_image: tuple[int, int] = (1, 6),
                        backgrounds: Sequence[str] = BACKGROUNDS, pixel_noise: bool = True,
                        jpeg_quality: int = 90, overwrite: bool = False, output_format: str = "voc",
                        progress_stream: TextIO | None = None) -> dict:
    """Writes the VOC (or COCO, `output_format`) tree under `root` and returns statistics (not saved
    in the tree). The images are the same in both formats.

    With `progress_stream`, a progress line (count, rate, ETA) is written there.

    Ids are 000001... (trainval first, then test). `root` must be empty or absent, unless
    `overwrite`, which replaces the format's directories (VOC: Annotations/, JPEGImages/ and
    ImageSets/; COCO: annotations/ and images/).
    """
    if output_format not in FORMATS:
        raise ValueError(f"unknown format {output_format!r}; expected one of {', '.join(FORMATS)}")
    root = Path(root)
    coco = output_format == "coco"
    _prepare_root(root, output_format, overwrite)
    image_directory = root / ("images" if coco else "JPEGImages")
    splits = {"trainval": [], "test": []}
    coco_images = {"trainval": [], "test": []}
    coco_objects = {"trainval": [], "test": []}
    stats = {"images": {"trainval": num_trainval, "test": num_test},
             "objects_per_class": {name: 0 for name in SHAPE_CLASSES}, "difficult": 0, "truncated": 0}
    progress = Progress(num_trainval + num_test, label="shapes", stream=progress_stream) \
        if progress_stream is not None else None
    for index in range(num_trainval + num_test):
        image_id = f"{index + 1:06d}"
        split = "trainval" if index < num_trainval else "test"
        splits[split].append(image_id)
        rng = np.random.default_rng([seed, index])
        height, width = _image_size(rng, image_size)
        scene = render_scene(rng, height, width, objects_per_image=objects_per_image,
                             backgrounds=backgrounds, pixel_noise=pixel_noise)
        buffer = io.BytesIO()
        Image.fromarray(scene.image, "RGB").save(buffer, format="JPEG", quality=jpeg_quality)
        (image_directory / f"{image_id}.jpg").write_bytes(buffer.getvalue())
        if coco:
            coco_images[split].append({"id": index + 1, "file_name": f"{image_id}.jpg",
                                       "width": width, "height": height})
            coco_objects[split].extend((index + 1, obj) for obj in scene.objects)
        else:
            xml = voc_annotation_xml(root.name, f"{image_id}.jpg", height, width, scene.objects)
            (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        for obj in scene.objects:
            stats["objects_per_class"][obj.name] += 1
            stats["difficult"] += obj.difficult
            stats["truncated"] += obj.truncated
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.close()
    for split, ids in splits.items():
        if coco:
            content = coco_annotation_json(coco_images[split], coco_objects[split])
            path = root / "annotations" / f"instances_{split}.json"
            path.write_text(json.dumps(content, indent=1) + "\n")
        else:
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return stats


FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Root of the VOC (or COCO) tree to write.")
flags.DEFINE_enum("format", "voc", list(FORMATS),
                  "voc: Annotations/, JPEGImages/, ImageSets/Main/; "
                  "coco: annotations/instances_{trainval,test}.json, images/.")
flags.DEFINE_integer("num_trainval", 400, "Images in ImageSets/Main/trainval.txt.")
flags.DEFINE_integer("num_test", 100, "Images in ImageSets/Main/test.txt.")
flags.DEFINE_integer("seed", 0, "Seed; the same seed gives identical files.")
flags.DEFINE_bool("overwrite", False, "Replace an existing tree in --output_dir.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    try:
        stats = make_shapes_dataset(FLAGS.output_dir, FLAGS.num_trainval, FLAGS.num_test, FLAGS.seed,
                                    overwrite=FLAGS.overwrite, output_format=FLAGS.format,
                                    progress_stream=sys.stderr)
    except FileExistsError as error:
        sys.exit(f"make_shapes.py: error: {error}")
    print(f"{FLAGS.output_dir}: {stats}")


if __name__ == "__main__":
    cli.run(main)
