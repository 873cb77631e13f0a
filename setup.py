"""Installs the `ssd` package.

TensorFlow comes in several distributions (tensorflow, tensorflow-cpu, ...). When one of them is
already installed, that one is required (at >= 2.16) instead of `tensorflow`, so that a CPU-only
machine keeps its small `tensorflow-cpu` wheel. `make test` / `make demo` install `tensorflow-cpu`
first on machines without `nvidia-smi` and `tensorflow[and-cuda]` on machines with it; the extras
`cpu` and `gpu` do the same for a manual `pip install`.

The recipes are written in the top-level `configs/` directory and installed as the package data
`ssd/configs/*.json`, so that `ssd.config.loading.load_config("ssd300_voc0712")` works from any install.
"""

from importlib.metadata import PackageNotFoundError, version

from setuptools import find_packages, setup

MIN_TENSORFLOW = "2.16"
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos",
                            "tf-nightly", "tf-nightly-cpu")


def tensorflow_requirement() -> str:
    for distribution in TENSORFLOW_DISTRIBUTIONS:
        try:
            version(distribution)
        except PackageNotFoundError:
            continue
        return f"{distribution}>={MIN_TENSORFLOW}"
    return f"tensorflow>={MIN_TENSORFLOW}"


setup(
    name="ssd-tf2",
    version="0.1.0",
    description="SSD300/SSD512-VGG16 object detection in TensorFlow 2, Estimator style",
    packages=find_packages(include=["ssd", "ssd.*"]) + ["ssd.configs"],
    package_dir={"ssd.configs": "configs"},
    package_data={"ssd.configs": ["*.json"]},
    python_requires=">=3.10",
    install_requires=[
        tensorflow_requirement(), "numpy", "pillow", "absl-py",
        "tensorboard",  # TensorFlow >= 2.21 no longer installs it; `make demo` prints its command
        "matplotlib",  # precision/recall plots (ssd/draw.py)
        "pycocotools",  # the official COCO metric (ssd/coco/metric.py)
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu>={MIN_TENSORFLOW}"],
        "gpu": [f"tensorflow[and-cuda]>={MIN_TENSORFLOW}"],
        "test": ["pytest", "pytest-xdist"],  # xdist: `make test` runs the files in two processes
    },
)
