"""The peers' inference speed on this machine, measured as bench/predict.py measures ours.

    pip install torch torchvision        # into any environment; the project does not need them
    python bench/peer_torchvision.py [--batch_size=8] [--repeats=3] [--iterations=2] [--threads=N]

Prints images/s (best and median of `--repeats` timed runs of `--iterations` calls each, after a
warm-up) of torchvision's SSD300-VGG16 (21 classes) and SSDLite320-MobileNetV3-Large (91
classes), network and post-processing in one call (their forward in eval mode), on random images
at the model's input size with random weights, under torch.inference_mode, with torch using as
many threads as this machine has cores. Compare with `python bench/predict.py --config=RECIPE`
(its "end to end from preprocessed tensors" row).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssd import cpu  # noqa: E402  (no TensorFlow: it reads /proc/cpuinfo)


def measure(model, images, iterations: int, repeats: int) -> list[float]:
    import torch

    with torch.inference_mode():
        model(images)  # warm-up
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(iterations):
                model(images)
            rates.append(iterations * len(images) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    try:
        import torch
        from torchvision.models import detection
    except ImportError:
        raise SystemExit("peer_torchvision.py: error: needs torch and torchvision "
                         "(pip install torch torchvision)") from None
    torch.set_num_threads(args.threads)
    print(f"{cpu.describe_cpu()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    torch.manual_seed(0)
    peers = {
        "torchvision ssd300_vgg16 (21 classes)":
            (detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21), 300),
        "torchvision ssdlite320_mobilenet_v3_large (91 classes)":
            (detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None), 320),
    }
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name, (model, size) in peers.items():
        model.eval()
        images = [torch.rand(3, size, size) for _ in range(args.batch_size)]
        rates = measure(model, images, args.iterations, args.repeats)
        print(f"{name:58s} {max(rates):7.2f} images/s best, {statistics.median(rates):7.2f} median")


if __name__ == "__main__":
    main()
