"""The README's commands as written: every flag they pass exists, and the "Train on your own data"
commands run, in order, on tiny made-up data sets of both formats.

The commands are read from the README itself, so a renamed flag, a changed default or a path the
converters no longer write breaks this test rather than a user's first afternoon. Only what the
machine cannot do here is added to `train.py` (no ImageNet download, a few steps of a narrow
network); everything else runs exactly as printed, through bash, in a directory where the README's
relative paths (`my_data`, `tfrecords`, `runs`) are made.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
OWN_DATA_SECTION = "## Train on your own data"
APPS = ("train.py", "eval.py", "visualize.py", "export.py", "demo.py", "import_weights.py", "dataset")
# what a CPU without network access needs beyond the README's training command
TINY_TRAINING = ["--pretrained=none", "--max_steps=2", "--batch_size=2",
                 "--set=model.width_multiplier=0.125"]


# --- reading the README -----------------------------------------------------------------

def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands_of(block: str) -> list[str]:
    """The block's commands, continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    lines = (line.split(" #", 1)[0].strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else None]


def python_commands(text: str) -> list[list[str]]:
    """Every README command that runs one of the project's scripts, as argument lists from the
    script on (environment assignments and `python` left out)."""
    found = []
    for block in bash_blocks(text):
        for command in commands_of(block):
            words = shlex.split(command)
            while words and re.match(r"^[A-Z_]+=", words[0]):
                words = words[1:]
            if len(words) >= 2 and words[0] == "python" and words[1].endswith(".py"):
                found.append(words[1:])
    return found


def test_the_readme_extraction_sees_the_commands_it_is_meant_to_check():
    text = README.read_text()
    scripts = {words[0] for words in python_commands(text)}
    assert {"train.py", "eval.py", "visualize.py", "export.py", "dataset/convert_voc.py",
            "dataset/convert_coco.py"} <= scripts
    own = [words[0] for words in python_commands(section(text, OWN_DATA_SECTION))]
    assert own.count("train.py") == 2 and own.count("dataset/convert_coco.py") == 2
    assert commands_of("a \\\n   --b=1  # note\n# only a comment\n\nc") == ["a --b=1", "c"]


def defined_flags(script: str) -> set[str]:
    result = subprocess.run([sys.executable, str(ROOT / script), "--helpfull"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(re.findall(r"^\s+--(?:\[no\])?([a-z][a-z0-9_]*)", result.stdout, flags=re.M))


@pytest.mark.slow  # starts every app once
def test_every_flag_in_the_readme_is_one_its_app_defines():
    by_script: dict[str, set[str]] = {}
    for words in python_commands(README.read_text()):
        names = {re.match(r"--([a-z0-9_]+)", w).group(1) for w in words[1:] if w.startswith("--")}
        by_script.setdefault(words[0], set()).update(names)
    unknown = []
    for script, names in sorted(by_script.items()):
        assert (ROOT / script).is_file(), f"the README runs {script}, which does not exist"
        defined = defined_flags(script)
        unknown += [f"{script} --{name}" for name in sorted(names)
                    if name not in defined and name.removeprefix("no") not in defined]
    assert not unknown, f"README flags the apps do not define: {unknown}"


# --- tiny data sets in the README's layouts ----------------------------------------------

def _picture(path: Path, boxes: list[tuple[int, int, int, int]], size=(96, 128)) -> None:
    """A grey picture with a bright rectangle per box (pixels x0, y0, x1, y1)."""
    pixels = np.full((size[0], size[1], 3), 90, np.uint8)
    for x0, y0, x1, y1 in boxes:
        pixels[y0:y1, x0:x1] = (230, 200, 40)
    Image.fromarray(pixels).save(path)


def _scene(i: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Objects of picture i: a cat always, a dog on every other."""
    objects = [("cat", (10 + i, 12, 50 + i, 60))]
    if i % 2:
        objects.append(("dog", (70, 30 + i, 118, 80)))
    return objects


def make_voc_layout(root: Path, splits: dict[str, int]) -> None:
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    index = 0
    for split, count in splits.items():
        ids = []
        for _ in range(count):
            image_id = f"img_{index:03d}"
            objects = _scene(index)
            _picture(root / "JPEGImages" / f"{image_id}.jpg", [box for _, box in objects])
            xml_objects = "".join(
                f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin>"
                f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                for name, (x0, y0, x1, y1) in objects)
            (root / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><filename>{image_id}.jpg</filename><size><width>128</width>"
                f"<height>96</height><depth>3</depth></size>{xml_objects}</annotation>")
            ids.append(image_id)
            index += 1
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def make_roboflow_export(root: Path, splits: dict[str, int]) -> None:
    """COCO files as Roboflow writes them: the data set itself as category 0, the supercategory
    of the real ones, and `_annotations.coco.json` beside the images."""
    categories = [{"id": 0, "name": "parts", "supercategory": "none"},
                  {"id": 1, "name": "bolt", "supercategory": "parts"},
                  {"id": 2, "name": "nut", "supercategory": "parts"}]
    names = {"cat": 1, "dog": 2}
    for split, count in splits.items():
        folder = root / split
        folder.mkdir(parents=True)
        images, annotations = [], []
        for i in range(count):
            objects = _scene(i)
            _picture(folder / f"part_{i}.jpg", [box for _, box in objects])
            images.append({"id": i, "file_name": f"part_{i}.jpg", "width": 128, "height": 96})
            for name, (x0, y0, x1, y1) in objects:
                annotations.append({"id": len(annotations), "image_id": i, "category_id": names[name],
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                    "iscrowd": 0})
        (folder / "_annotations.coco.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))


def workspace(tmp_path: Path) -> dict[str, str]:
    """The environment for running the README's commands in tmp_path: `python` is this
    interpreter, and the project's scripts are where the README's relative paths expect them."""
    for name in APPS:
        (tmp_path / name).symlink_to(ROOT / name)
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    python = bin_dir / "python"  # a script, not a link: a venv is found from its interpreter's path
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def run_as_written(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    if shlex.split(command)[1] == "train.py":
        command = f"{command} {' '.join(TINY_TRAINING)}"
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow  # converts, trains and evaluates twice
def test_the_own_data_commands_run_as_written(tmp_path):
    env = workspace(tmp_path)
    make_voc_layout(tmp_path / "my_data", {"trainval": 6, "test": 3})
    make_roboflow_export(tmp_path / "my_export", {"train": 6, "valid": 3})
    commands = [c for block in bash_blocks(section(README.read_text(), OWN_DATA_SECTION))
                for c in commands_of(block)]
    logs = {}
    for command in commands:
        logs[command] = run_as_written(command, tmp_path, env).stderr

    for model_dir, classes in (("runs/pets", ["cat", "dog"]), ("runs/parts", ["bolt", "nut"])):
        saved = json.loads((tmp_path / model_dir / "config.json").read_text())
        assert saved["data"]["class_names"] == classes
        assert saved["model"]["num_classes"] == len(classes) + 1
        trained = next(log for command, log in logs.items()
                       if "train.py" in command and f"--model_dir={model_dir}" in command)
        assert "classes from the records" in trained
        reports = list((tmp_path / model_dir).glob("eval_*/**/*.json"))
        assert reports, f"eval.py wrote no report into {model_dir}"
    drawn = list((tmp_path / "runs/pets/drawn").glob("*"))
    assert len(drawn) >= 9  # one picture per image of my_data/JPEGImages
