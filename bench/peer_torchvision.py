"""The peers' speed on this machine, measured as bench/predict.py and bench/train_step.py measure ours.

    pip install torch torchvision        # into any environment; the project does not need them
    python bench/peer_torchvision.py [--mode=infer|train] [--batch_size=8] [--repeats=3]
        [--iterations=2] [--threads=N]

--mode=infer prints images/s (best and median of `--repeats` timed runs of `--iterations` calls
each, after a warm-up) of torchvision's SSD300-VGG16 (21 classes) and SSDLite320-MobileNetV3-Large
(91 classes), network and post-processing in one call (their forward in eval mode), on random
images at the model's input size with random weights, under torch.inference_mode. Compare with
`python bench/predict.py --config=RECIPE` (its "end to end from preprocessed tensors" row).

--mode=train times torchvision's SSD300-VGG16 training step (forward in train mode with its
matcher, hard negative mining and loss, backward, SGD with momentum 0.9 and weight decay 5e-4) on
one batch of random 300x300 images with 1-4 random boxes each, repeated, like
`python bench/train_step.py --input=cached`. torch uses as many threads as this machine has cores.
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


def measure_training(batch_size: int, iterations: int, repeats: int) -> list[float]:
    """images/s of torchvision's SSD300-VGG16 training step, one cached batch repeated."""
    import torch
    from torchvision.models import detection

    model = detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 300, 300, generator=generator) for _ in range(batch_size)]
    targets = []
    for _ in range(batch_size):
        count = int(torch.randint(1, 5, (1,), generator=generator))
        corner = torch.rand(count, 2, generator=generator) * 200
        size = 20 + torch.rand(count, 2, generator=generator) * 80
        targets.append({"boxes": torch.cat([corner, corner + size], dim=1),
                        "labels": torch.randint(1, 21, (count,), generator=generator)})

    def step():
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        rates.append(iterations * batch_size / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
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
    if args.mode == "train":
        rates = measure_training(args.batch_size, args.iterations, args.repeats)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"{'torchvision ssd300_vgg16 train step (21 classes)':58s} {max(rates):7.3f} images/s "
              f"best, {statistics.median(rates):7.3f} median")
        return
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
