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

import colorsys
import dataclasses
import io
import json
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence, TextIO

from ssd import cli  # first: keeps TensorFlow's start-up lines quiet, whoever imports it

cli.quiet_tensorflow_startup()

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from ssd.coco.coords import normalized_to_coco
from ssd.progress import Progress
from ssd.voc.coords import voc_to_normalized

SHAPE_CLASSES = ("circle", "square", "triangle", "star")
# COCO category ids of the classes (listed in SHAPE_CLASSES order): sparse and not increasing.
COCO_CATEGORY_IDS = {"circle": 11, "square": 3, "triangle": 20, "star": 7}
FORMATS = ("voc", "coco")
_OWNED = {"voc": ("Annotations", "JPEGImages", "ImageSets"), "coco": ("annotations", "images")}
BACKGROUNDS = ("noise", "gradient", "stripes")  # "plain" also exists, for tests

MIN_SCALE, MEDIAN_SCALE, MAX_SCALE = 0.08, 0.24, 0.7  # shape size / shorter image side
DIFFICULT_BELOW = 0.4      # visible fraction under which an object is difficult
REJECT_BELOW = 0.25        # no placement may leave an object less visible than this
MIN_INSIDE = 0.5           # at least this fraction of a shape lies inside the image
TRUNCATION_PROBABILITY = 0.2
PLACEMENT_TRIALS = 20
MIN_COLOUR_DISTANCE = 100.0  # RGB distance of a shape's colour from what it covers


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    name: str
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax: VOC 1-based inclusive pixels
    truncated: int
    difficult: int
    visible_fraction: float
    colour: tuple[int, int, int]
    visible_pixels: int


@dataclasses.dataclass(frozen=True)
class Scene:
    image: np.ndarray   # [H, W, 3] uint8, before JPEG compression
    owner: np.ndarray   # [H, W] int16: index of the object visible at each pixel, -1 for background
    objects: tuple[ShapeObject, ...]


@dataclasses.dataclass
class _Placed:
    name: str
    region: tuple[int, int, int, int]  # y0, y1, x0, x1 of the in-image part of its canvas
    full_area: int
    inside_area: int
    visible: int
    colour: np.ndarray


# ----------------------------------------------------------------------------- backgrounds

def _random_colour(rng: np.random.Generator, low: float = 30, high: float = 225) -> np.ndarray:
    return rng.uniform(low, high, size=3).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """[H, W, 3] noise in [-1, 1] varying over about `cells` cells along the longer side."""
    grid_h = max(2, round(cells * height / max(height, width)))
    grid_w = max(2, round(cells * width / max(height, width)))
    coarse = rng.integers(0, 256, size=(grid_h, grid_w, 3), dtype=np.uint8)
    fine = Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC)
    return np.asarray(fine, np.float32) / 127.5 - 1.0


def _background(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    base = _random_colour(rng)
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = base
    if kind == "plain":
        return canvas
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = (x * np.cos(angle) + y * np.sin(angle))[..., None]
    if kind == "gradient":
        span = float(along.max() - along.min()) or 1.0
        delta = rng.uniform(-70, 70, size=3).astype(np.float32)
        canvas += ((along - along.min()) / span - 0.5) * delta
    elif kind == "stripes":
        period = rng.uniform(8, 60)
        wave = np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))
        if rng.random() < 0.5:
            wave = np.sign(wave)
        canvas += wave * rng.uniform(-40, 40, size=3).astype(np.float32)
    elif kind == "noise":
        canvas += _smooth_noise(rng, height, width, int(rng.integers(3, 24))) * rng.uniform(20, 50)
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS + ('plain',)}")
    if rng.random() < 0.4:  # a second, finer texture layer
        canvas += _smooth_noise(rng, height, width, int(rng.integers(24, 64))) * rng.uniform(5, 20)
    return np.clip(canvas, 0, 255)


# ----------------------------------------------------------------------------- shapes

def _outline(rng: np.random.Generator, name: str, radius: float) -> np.ndarray:
    """Polygon vertices [K, 2] (x, y) around the origin, for every class but circle."""
    rotation = rng.uniform(0, 2 * np.pi)
    if name == "square":
        angles = rotation + np.arange(4) * np.pi / 2
        radii = np.full(4, radius)
    elif name == "triangle":
        angles = rotation + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.15, 0.15, size=3)
        radii = np.full(3, radius)
    elif name == "star":
        angles = rotation + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.5))
    else:
        raise ValueError(f"no outline for {name!r}")
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1)


def _shape_mask(rng: np.random.Generator, name: str, radius: float, stretch: tuple[float, float]
                ) -> tuple[np.ndarray, float, float]:
    """(boolean mask of the shape on its own tight canvas, x and y of the centre on that canvas)."""
    if name == "circle":
        half = np.array([radius * stretch[0], radius * stretch[1]])
        points = np.array([-half, half])
    else:
        points = _outline(rng, name, radius) * np.asarray(stretch)
    low = np.floor(points.min(axis=0)) - 1
    size = (np.ceil(points.max(axis=0)) - low + 2).astype(int)
    local = points - low
    mask = Image.new("1", (int(size[0]), int(size[1])), 0)
    draw = ImageDraw.Draw(mask)
    if name == "circle":
        draw.ellipse([tuple(local[0]), tuple(local[1])], fill=1)
    else:
        draw.polygon([tuple(p) for p in local], fill=1)
    return np.asarray(mask, bool), float(-low[0]), float(-low[1])


def _pick_colour(rng: np.random.Generator, references: Sequence[np.ndarray]) -> np.ndarray:
    """A colour far (in RGB) from every reference colour, or the farthest of the candidates tried."""
    best, best_distance = None, -1.0
    for _ in range(40):
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.25, 1.0))
        colour = np.array(rgb, np.float32) * 255
        distance = min(float(np.linalg.norm(colour - r)) for r in references)
        if distance >= MIN_COLOUR_DISTANCE:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def render_scene(rng: np.random.Generator, height: int, width: int, *,
                 objects_per_image: tuple[int, int] = (1, 6), backgrounds: Sequence[str] = BACKGROUNDS,
                 pixel_noise: bool = True) -> Scene:
    """Draws one image and annotates every shape drawn in it."""
    kind = backgrounds[int(rng.integers(len(backgrounds)))]
    canvas = _background(rng, kind, height, width)
    owner = np.full((height, width), -1, np.int16)
    short_side = min(height, width)
    placed: list[_Placed] = []
    for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
        name = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        scale = float(np.clip(MEDIAN_SCALE * np.exp(rng.normal(0, 0.5)), MIN_SCALE, MAX_SCALE))
        log_aspect = rng.uniform(-0.15, 0.15)
        stretch = (float(np.exp(log_aspect)), float(np.exp(-log_aspect)))
        mask, centre_x, centre_y = _shape_mask(rng, name, scale * short_side / 2, stretch)
        allow_truncation = rng.random() < TRUNCATION_PROBABILITY
        for _ in range(PLACEMENT_TRIALS):
            candidate = _place(rng, mask, centre_x, centre_y, height, width, allow_truncation, owner,
                               placed)
            if candidate is not None:
                break
        else:
            continue
        (y0, y1, x0, x1), inside, covered = candidate
        region = canvas[y0:y1, x0:x1]
        colour = _pick_colour(rng, _covered_colours(region[inside], owner[y0:y1, x0:x1][inside], placed))
        shading = _shading(rng, y1 - y0, x1 - x0)
        region[inside] = np.clip(colour * (1 + shading[inside])[:, None], 0, 255)
        for index, count in covered.items():
            placed[index].visible -= count
        owner[y0:y1, x0:x1][inside] = len(placed)
        placed.append(_Placed(name=name, region=(y0, y1, x0, x1), full_area=int(mask.sum()),
                              inside_area=int(inside.sum()), visible=int(inside.sum()), colour=colour))
    if pixel_noise:
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(2, 6)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return Scene(image=image, owner=owner, objects=tuple(_annotate(owner, placed)))


def _covered_colours(pixels: np.ndarray, owners: np.ndarray, placed: Sequence[_Placed]
                     ) -> list[np.ndarray]:
    """The colours a new shape covers (over more than 5% of its area), taken separately so that no
    single one of them can match it: each earlier shape's colour, and for the background the means
    of its darker and its lighter half (the two colours of a stripe pattern, the ends of a gradient)."""
    colours = []
    for index in np.unique(owners):
        part = owners == index
        if part.sum() <= 0.05 * len(owners):
            continue
        if index >= 0:
            colours.append(placed[index].colour)
            continue
        background = pixels[part]
        brightness = background.sum(axis=-1)
        lighter = brightness > np.median(brightness)
        colours.append(background.mean(axis=0))
        if lighter.any() and not lighter.all():
            colours += [background[lighter].mean(axis=0), background[~lighter].mean(axis=0)]
    return colours or [pixels.mean(axis=0)]


def _place(rng: np.random.Generator, mask: np.ndarray, centre_x: float, centre_y: float, height: int,
           width: int, allow_truncation: bool, owner: np.ndarray, placed: Sequence[_Placed]):
    """A random position for `mask` meeting the visibility rules: ((y0, y1, x0, x1), in-image mask,
    {earlier object: pixels it would lose}), or None."""
    mask_h, mask_w = mask.shape
    fits = mask_w <= width and mask_h <= height
    if allow_truncation or not fits:
        left = rng.uniform(-centre_x, width - centre_x)
        top = rng.uniform(-centre_y, height - centre_y)
    else:
        left = rng.uniform(0, width - mask_w)
        top = rng.uniform(0, height - mask_h)
    left, top = int(round(left)), int(round(top))
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + mask_w, width), min(top + mask_h, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    inside = mask[y0 - top:y1 - top, x0 - left:x1 - left]
    inside_area = int(inside.sum())
    if inside_area < MIN_INSIDE * mask.sum():
        return None
    beneath = owner[y0:y1, x0:x1][inside]
    indices, counts = np.unique(beneath[beneath >= 0], return_counts=True)
    covered = dict(zip(indices.tolist(), counts.tolist()))
    for index, count in covered.items():
        if placed[index].visible - count < REJECT_BELOW * placed[index].full_area:
            return None
    return (y0, y1, x0, x1), inside, covered


def _shading(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A gentle linear light ramp across a shape, so shapes are not perfectly flat."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    span = float(along.max() - along.min()) or 1.0
    return ((along - along.min()) / span - 0.5) * rng.uniform(0, 0.25)


def _annotate(owner: np.ndarray, placed: Sequence[_Placed]) -> list[ShapeObject]:
    objects = []
    for index, item in enumerate(placed):
        y0, y1, x0, x1 = item.region
        ys, xs = np.nonzero(owner[y0:y1, x0:x1] == index)
        visible_fraction = item.visible / item.full_area
        objects.append(ShapeObject(
            name=item.name,
            box=(int(x0 + xs.min() + 1), int(y0 + ys.min() + 1),
                 int(x0 + xs.max() + 1), int(y0 + ys.max() + 1)),
            truncated=int(item.inside_area < item.full_area),
            difficult=int(visible_fraction < DIFFICULT_BELOW),
            visible_fraction=visible_fraction,
            colour=tuple(int(c) for c in np.round(item.colour)),
            visible_pixels=int(len(xs))))
    return objects


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
