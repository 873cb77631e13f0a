"""Drawing one synthetic scene: coloured shapes on a textured background, with the VOC-style
annotation of what is visible (dataset/make_shapes.py describes the rules and writes the files).
"""

from __future__ import annotations

import colorsys
import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle", "star")
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
