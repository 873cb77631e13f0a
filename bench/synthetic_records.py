"""The benchmarks' training data: VOC-sized synthetic JPEGs with boxes, written as TFRecords, and
one batch of it cached and repeated (the model step alone, without the input pipeline's cost)."""

from __future__ import annotations

import io
import os

import numpy as np

NUM_IMAGES = 64


def write_synthetic_records(directory: str, class_count: int) -> str:
    """64 VOC-sized JPEGs with 1-4 filled rectangles each, in 4 shards; returns the directory."""
    import tensorflow as tf
    from PIL import Image

    from ssd.data.records import make_example
    rng = np.random.default_rng(0)
    writers = [tf.io.TFRecordWriter(os.path.join(directory, f"bench-{i:05d}-of-00004")) for i in range(4)]
    for index in range(NUM_IMAGES):
        height, width = (375, 500) if index % 3 else (500, 375)
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, 5))):
            y0, x0 = rng.uniform(0.0, 0.7, size=2)
            y1, x1 = min(1.0, y0 + rng.uniform(0.1, 0.5)), min(1.0, x0 + rng.uniform(0.1, 0.5))
            label = int(rng.integers(1, class_count + 1))
            pixels[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = rng.integers(0, 256, 3)
            boxes.append([y0, x0, y1, x1])
            labels.append(label)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        example = make_example(encoded=buffer.getvalue(), image_format="jpeg", height=height, width=width,
                               filename=f"{index:06d}.jpg", source_id=f"{index:06d}", boxes=boxes,
                               labels=labels, texts=["object"] * len(labels),
                               difficult=[0] * len(labels), truncated=[0] * len(labels))
        writers[index % 4].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return directory


def one_cached_batch(input_fn):
    """input_fn's first batch, cached and repeated: the same input function signature."""
    def cached_input_fn(input_context=None):
        return input_fn(input_context).take(1).cache().repeat()
    return cached_input_fn
