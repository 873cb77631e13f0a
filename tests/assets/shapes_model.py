"""The kept trained shapes model (made by tests/assets/make_shapes_model.py) and its data set."""

import shutil
from pathlib import Path

CLASSES = ["circle", "square", "triangle", "star"]
TRAIN_STEPS = 600
LR_BOUNDARIES = "[30,100,450]"  # the demo's warm-up shortened; the decay where the recipe has it
NUM_TRAIN, NUM_TEST = 400, 240
SEED = 0
MODEL_DIR = Path(__file__).resolve().parent / "shapes_ssd300_cpu"


def copy_model_dir(destination: Path) -> Path:
    """A copy of the kept model directory (tests never write into the repository)."""
    if not (MODEL_DIR / "checkpoint").is_file():
        raise FileNotFoundError(f"{MODEL_DIR} is missing: run python tests/assets/make_shapes_model.py")
    shutil.copytree(MODEL_DIR, destination)
    return destination
