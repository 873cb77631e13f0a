"""A regular (non-editable) `pip install` ships the recipes: they load by name from anywhere."""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains a model or starts processes


ROOT = Path(__file__).resolve().parent.parent
# what setup.py needs to build the package; tests, apps and the virtualenv stay behind
SOURCES = ("setup.py", "README.md", "ssd", "configs")

CHECK = """
import json
import ssd.config.loading as config

c = config.load_config("ssd300_voc0712")
print(json.dumps({"module": config.__file__, "recipe_dir": str(config.recipe_dir()),
                  "recipes": config.recipe_names(), "preset": c.anchors.preset,
                  "maps": c.anchors.feature_map_sizes}))
"""


def _run(command, cwd):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_installed_package_loads_recipes_by_name(tmp_path):
    source = tmp_path / "source"  # a copy: building in place would leave build/ in the repo
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    # `--system-site-packages` would only reach the base interpreter's packages: this file
    # shows the new environment the test interpreter's (pip, setuptools, absl, TensorFlow)
    # after its own site-packages, where the package is installed, so nothing is downloaded.
    # .pth files found there are not run, so the editable install of the repository stays out.
    site_packages = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              tmp_path).strip())
    (site_packages / "test_interpreter.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
          str(source)], tmp_path)
    shutil.rmtree(source)  # the installed package may not need the sources

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    report = json.loads(_run([str(python), "-c", CHECK], outside).strip().splitlines()[-1])
    assert Path(report["module"]).parent == site_packages / "ssd" / "config"
    assert Path(report["recipe_dir"]) == site_packages / "ssd" / "configs"
    assert report["recipes"] == sorted(p.stem for p in (ROOT / "configs").glob("*.json"))
    assert report["preset"] == "tf1" and report["maps"] == [38, 19, 10, 5, 3, 1]
