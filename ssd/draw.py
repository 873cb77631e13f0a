"""Pictures for people: detections and ground truth drawn on images, precision/recall curves.

Boxes arrive here as continuous pixel edges `[ymin, xmin, ymax, xmax]` of the image being drawn
on (normalized boxes times height/width); drawing is the only place that needs them.
"""

from __future__ import annotations

import colorsys
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GROUND_TRUTH_COLOR = (255, 255, 255)


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """One saturated, well-separated colour per class (golden-ratio hue steps), stable across runs."""
    colors = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _font_for(image_size: tuple[int, int]) -> ImageFont.ImageFont:
    return _font(max(11, round(min(image_size) / 28)))


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color, font) -> None:
    """Text on a filled tag just above the box (inside it when the box touches the top edge)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x, y = xy
    y = y - h if y - h >= 0 else y
    draw.rectangle([x, y, x + w, y + h], fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255),
              font=font)


def draw_boxes(image: Image.Image, boxes: np.ndarray, classes: Sequence[int], class_names: Sequence[str],
               scores: Sequence[float] | None = None, score_threshold: float = 0.0,
               colors: Sequence[tuple[int, int, int]] | None = None,
               outline_only: bool = False) -> Image.Image:
    """Returns an RGB copy of `image` with boxes and "name score" labels drawn.

    boxes: [N, 4] pixel edges [ymin, xmin, ymax, xmax]; classes: 1-based labels;
    class_names: names of labels 1..C-1. Boxes scoring below `score_threshold` are skipped.
    """
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    colors = colors or class_colors(len(class_names) + 1)
    font = _font_for(canvas.size)
    width = max(2, round(min(canvas.size) / 200))
    order = range(len(classes)) if scores is None else np.argsort(np.asarray(scores), kind="stable")
    for i in order:  # lowest score first, so the strongest boxes end up on top
        if scores is not None and scores[i] < score_threshold:
            continue
        label = int(classes[i])
        name = class_names[label - 1] if 1 <= label <= len(class_names) else f"class {label}"
        color = colors[label % len(colors)]
        ymin, xmin, ymax, xmax = (float(v) for v in boxes[i])
        draw.rectangle([xmin, ymin, xmax, ymax], outline=color, width=width)
        if not outline_only:
            text = name if scores is None else f"{name} {scores[i]:.2f}"
            _label(draw, (xmin, ymin), text, color, font)
    return canvas


def side_by_side(left: Image.Image, right: Image.Image, titles: Sequence[str] = ("", "")) -> Image.Image:
    """Two images next to each other on one canvas, each with an optional title bar."""
    font = _font_for(left.size)
    bar = (getattr(font, "size", 11) + 8) if any(titles) else 0
    gap = 8
    width = left.width + gap + right.width
    height = max(left.height, right.height) + bar
    canvas = Image.new("RGB", (width, height), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for x, image, title in ((0, left, titles[0]), (left.width + gap, right, titles[1])):
        canvas.paste(image.convert("RGB"), (x, bar))
        if title:
            draw.text((x + 4, 4), title, fill=(255, 255, 255), font=font)
    return canvas


def draw_precision_recall(curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                          aps: Mapping[str, float | None], title: str = "",
                          panel_size: int = 220) -> Image.Image:
    """A grid of per-class precision/recall plots, each titled with its AP."""
    names = list(curves)
    columns = min(5, max(1, len(names)))
    rows = max(1, -(-len(names) // columns))
    header = 30 if title else 0
    canvas = Image.new("RGB", (columns * panel_size, rows * panel_size + header), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    if title:
        draw.text((8, 6), title, fill=(0, 0, 0), font=font)
    margin = 28
    colors = class_colors(len(names) + 1)
    for index, name in enumerate(names):
        x0 = (index % columns) * panel_size + margin
        y0 = (index // columns) * panel_size + header + 18
        side = panel_size - margin - 10
        draw.rectangle([x0, y0, x0 + side, y0 + side], outline=(120, 120, 120))
        for t in (0.25, 0.5, 0.75):
            draw.line([x0 + t * side, y0, x0 + t * side, y0 + side], fill=(225, 225, 225))
            draw.line([x0, y0 + side - t * side, x0 + side, y0 + side - t * side], fill=(225, 225, 225))
        recall, precision = (np.asarray(v, dtype=float) for v in curves[name])
        if recall.size:
            points = [(x0 + r * side, y0 + side - p * side) for r, p in zip(recall, precision)]
            if len(points) == 1:
                points = points * 2
            draw.line(points, fill=colors[index + 1], width=2)
        ap = aps.get(name)
        ap_text = "n/a" if ap is None else f"{100 * ap:.1f}"
        draw.text((x0, y0 - 16), f"{name}  AP {ap_text}", fill=(0, 0, 0), font=font)
        draw.text((x0 + side - 34, y0 + side + 2), "recall", fill=(90, 90, 90), font=font)
        draw.text((x0 - margin + 2, y0), "prec", fill=(90, 90, 90), font=font)
    return canvas
