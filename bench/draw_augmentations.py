"""Draws a grid of training augmentations with their boxes, to check them by eye.

  python bench/draw_augmentations.py OUT.png [--records PATTERN] [--augmentation paper]
      [--count 23] [--columns 6] [--seed 0]

The first cell is the image resized only; the others are independent draws of the training
augmentation of the same record (the first record of PATTERN, or a synthetic 500x375 image).
Boxes are drawn one pixel outside the object edges they describe.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tensorflow as tf  # noqa: E402

from input_pipeline import synthetic_jpeg  # noqa: E402
from ssd.data.augment import recipe as augment  # noqa: E402
from ssd.config.loading import load_config  # noqa: E402
from ssd.data.record_files import resolve_files  # noqa: E402
from ssd.data.preprocessing import to_display  # noqa: E402
from ssd.data.records import parse_example  # noqa: E402

COLOURS = [(255, 255, 255), (255, 64, 64), (64, 255, 64), (64, 160, 255), (255, 220, 0)]


def to_rgb_uint8(model_input: tf.Tensor, config) -> np.ndarray:
    """The model input back to a picture: RGB uint8."""
    return np.round(to_display(model_input, config).numpy() * 255.0).astype(np.uint8)


def draw_cell(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, title: str) -> Image.Image:
    cell = Image.fromarray(image)
    draw = ImageDraw.Draw(cell)
    height, width = image.shape[:2]
    for box, label in zip(boxes, labels):
        ymin, xmin, ymax, xmax = box * [height, width, height, width]
        draw.rectangle([xmin - 1, ymin - 1, xmax, ymax], outline=COLOURS[label % len(COLOURS)])
    draw.text((3, 2), title, fill=(255, 255, 0))
    return cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("--records", help="TFRecords (glob/dir); default: a synthetic image")
    parser.add_argument("--augmentation", default="paper", choices=["paper", "tf1", "none"])
    parser.add_argument("--count", type=int, default=23)
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = load_config("ssd300_voc0712", {"data.augmentation": args.augmentation})
    if args.records:
        serialized = next(iter(tf.data.TFRecordDataset(resolve_files(args.records)[:1])))
        example = parse_example(serialized)
        encoded, boxes, labels = example["encoded"], example["boxes"], example["labels"]
        difficult = example["difficult"]
    else:
        raw, boxes, labels = synthetic_jpeg(np.random.default_rng(args.seed), 3)
        encoded = tf.constant(raw)
        boxes = tf.constant(boxes, tf.float32)
        labels = tf.constant(labels, tf.int32)
        difficult = tf.zeros_like(labels, tf.bool)

    size = config.model.input_size
    plain = augment.augment_for_training(encoded, boxes, labels, difficult, tf.constant([0, 0]),
                                         load_config("ssd300_voc0712",
                                                     {"data.augmentation": "none"}).data, size)
    cells = [draw_cell(to_rgb_uint8(plain["image"], config), plain["boxes"].numpy(),
                       plain["labels"].numpy(), "resized only")]
    run = tf.function(lambda seed: augment.augment_for_training(
        encoded, boxes, labels, difficult, seed, config.data, size))
    for i in range(args.count):
        sample = run(tf.constant([args.seed, i], tf.int64))
        cells.append(draw_cell(to_rgb_uint8(sample["image"], config),
                               sample["boxes"].numpy(), sample["labels"].numpy(),
                               f"#{i} boxes={len(sample['labels'])}"))

    rows = -(-len(cells) // args.columns)
    gap = 4
    grid = Image.new("RGB", (args.columns * (size + gap), rows * (size + gap)), (40, 40, 40))
    for i, cell in enumerate(cells):
        grid.paste(cell, ((i % args.columns) * (size + gap), (i // args.columns) * (size + gap)))
    grid.save(args.output)
    print(f"wrote {args.output}: {len(cells)} cells")


if __name__ == "__main__":
    main()
