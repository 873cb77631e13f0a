"""Throughput of the training input pipeline: paper augmentation + SSD300 target encoding.

Writes TFRecords of VOC-sized synthetic JPEGs (500x375, about 40 KB: smooth texture plus 2-3
filled shapes, quality 88) unless --data_dir already holds some, then runs the TRAIN input_fn at
batch 32 and prints images/s, images/s per core and the peak RSS.

  python bench/input_pipeline.py [--data_dir DIR] [--images 320] [--batches 40] [--seed 1]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ssd import cpu  # noqa: E402

cpu.prefer_onednn()  # before TensorFlow loads: the kernels the apps use

import tensorflow as tf  # noqa: E402

from ssd.config.loading import VOC_CLASSES, load_config  # noqa: E402
from ssd.data.input_fn import make_input_fn  # noqa: E402
from ssd.modes import ModeKeys  # noqa: E402
from ssd.data.records import SHARD_PATTERN, make_example, shard_name  # noqa: E402

WIDTH, HEIGHT = 500, 375


def synthetic_jpeg(rng: np.random.Generator, num_objects: int) -> tuple[bytes, list, list]:
    """A textured 500x375 JPEG with `num_objects` filled rectangles/ellipses and their boxes."""
    coarse = rng.random((HEIGHT // 16 + 2, WIDTH // 16 + 2, 3)) * 255
    image = Image.fromarray(coarse.astype(np.uint8)).resize((WIDTH, HEIGHT), Image.BICUBIC)
    pixels = np.asarray(image).astype(np.float32) + rng.normal(0, 5, (HEIGHT, WIDTH, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    boxes, labels = [], []
    for _ in range(num_objects):
        w, h = int(rng.integers(40, 250)), int(rng.integers(40, 250))
        x0, y0 = int(rng.integers(0, WIDTH - w)), int(rng.integers(0, HEIGHT - h))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape([x0, y0, x0 + w - 1, y0 + h - 1], fill=colour)
        boxes.append([y0 / HEIGHT, x0 / WIDTH, (y0 + h) / HEIGHT, (x0 + w) / WIDTH])
        labels.append(int(rng.integers(1, len(VOC_CLASSES) + 1)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue(), boxes, labels


def write_records(directory: str, num_images: int, num_shards: int = 4) -> float:
    """Writes `num_images` examples into `num_shards` files; returns the mean JPEG size (bytes)."""
    rng = np.random.default_rng(0)
    sizes = []
    writers = [tf.io.TFRecordWriter(os.path.join(directory, shard_name("train", i, num_shards)))
               for i in range(num_shards)]
    for n in range(num_images):
        encoded, boxes, labels = synthetic_jpeg(rng, int(rng.integers(2, 4)))
        sizes.append(len(encoded))
        example = make_example(encoded=encoded, image_format="jpeg", height=HEIGHT, width=WIDTH,
                               filename=f"{n:06d}.jpg", source_id=f"{n:06d}", boxes=boxes,
                               labels=labels, texts=[VOC_CLASSES[i - 1] for i in labels],
                               difficult=[0] * len(labels), truncated=[0] * len(labels))
        writers[n % num_shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return float(np.mean(sizes))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    print(cpu.describe())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", help="TFRecords to read (written there if it has none)")
    parser.add_argument("--images", type=int, default=320, help="images to generate")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=8, help="batches before timing")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--augmentation", default="paper", choices=["paper", "tf1", "tfod", "none"])
    parser.add_argument("--seed", type=int, default=None, help="data.seed (deterministic order)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir or scratch
        os.makedirs(data_dir, exist_ok=True)
        if not tf.io.gfile.glob(os.path.join(data_dir, SHARD_PATTERN)):
            mean_size = write_records(data_dir, args.images)
            print(f"wrote {args.images} JPEGs {WIDTH}x{HEIGHT}, "
                  f"mean size {mean_size / 1024:.1f} KiB")
        config = load_config("ssd300_voc0712", {"train.batch_size": args.batch_size,
                                                "data.augmentation": args.augmentation,
                                                "data.seed": args.seed})
        input_fn = make_input_fn(data_dir, config, ModeKeys.TRAIN)
        cores = os.cpu_count() or 1
        rates = []
        for run in range(args.runs):
            iterator = iter(input_fn())
            for _ in range(args.warmup):
                next(iterator)
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            for _ in range(args.batches):
                features, labels = next(iterator)
            elapsed, cpu_used = time.perf_counter() - start, _cpu_seconds() - cpu_start
            images = args.batches * args.batch_size
            rate = images / elapsed
            rates.append(rate)
            print(f"run {run + 1}: {rate:.1f} images/s ({rate / cores:.1f} per core, "
                  f"{cores} cores); {1000 * cpu_used / images:.2f} ms CPU per image")
            del iterator
        shapes = {k: v.shape.as_list() for k, v in {**features, **labels}.items()}
        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"batch: {shapes}")
        print(f"best {max(rates):.1f} images/s, median {float(np.median(rates)):.1f}; "
              f"per core best {max(rates) / cores:.1f}; peak RSS {peak_rss_mib:.0f} MiB")


if __name__ == "__main__":
    main()
