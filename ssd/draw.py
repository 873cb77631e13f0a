"""Pictures for people: detections and ground truth drawn on images, precision/recall curves.

Curves are plotted with matplotlib's object API and Agg canvas: no pyplot, no display.

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


def _curve_label(name: str, recall: np.ndarray, ap: float | None) -> str:
    if ap is None:
        return f"{name} (no ground truth)"
    if not recall.size:
        return f"{name} (AP {100 * ap:.1f}, no detections)"
    return f"{name} (AP {100 * ap:.1f})"


def precision_recall_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                            aps: Mapping[str, float | None], title: str = "", dpi: float = 100.0):
    """A matplotlib Figure of all classes' precision/recall curves on one pair of 0..1 axes.

    curves: {name: (recall [D], precision [D])}, points in detection score order; aps: {name: AP
    in [0, 1] or None when the class has no ground truth}. The legend gives every class with its
    AP in percent, in `curves` order; classes with no ground truth or no detections are listed
    as such, without a line. Colours repeat every 10 classes with a new line style.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    names = list(curves)
    legend_columns = max(1, -(-len(names) // 24))
    figure = Figure(figsize=(6.4 + 2.4 * legend_columns, 6.4), dpi=dpi, layout="constrained")
    axes = figure.add_subplot()
    palette = colormaps["tab10"].colors
    styles = ("-", "--", ":", "-.")
    for index, name in enumerate(names):
        recall, precision = (np.asarray(v, dtype=float).reshape(-1) for v in curves[name])
        ap = aps.get(name)
        finite = np.isfinite(recall) & np.isfinite(precision)
        recall, precision = recall[finite], precision[finite]
        label = _curve_label(name, recall, ap)
        color, style = palette[index % 10], styles[(index // 10) % len(styles)]
        if ap is None or not recall.size:
            axes.plot([], [], linestyle="none", label=label)  # listed, nothing to draw
        else:
            axes.plot(recall, precision, color=color, linestyle=style, linewidth=1.6,
                      marker="." if recall.size == 1 else None, label=label)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.02)
    ticks = np.linspace(0.0, 1.0, 11)
    axes.set_xticks(ticks)
    axes.set_yticks(ticks)
    axes.grid(True, color="0.85", linewidth=0.8)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    if title:
        axes.set_title(title)
    if names:
        figure.legend(loc="outside right upper", ncols=legend_columns, fontsize="small",
                      handlelength=2.5, frameon=False)
    return figure


def draw_precision_recall(curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                          aps: Mapping[str, float | None], title: str = "",
                          panel_size: int = 220) -> Image.Image:
    """`precision_recall_figure` rendered (matplotlib's Agg backend) to an RGB image.

    panel_size scales the resolution: 220 renders at 100 dots per inch (the plot is 640 pixels
    high), 440 at 200.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = precision_recall_figure(curves, aps, title, dpi=100.0 * panel_size / 220)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
