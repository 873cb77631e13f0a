"""Keras' ImageNet weight files: where Keras caches them, reading the cache without a network,
and the one error that names the file, the cache and the alternatives when a download fails.

Shared by the backbone initializers (`vgg16`, `mobilenet_v2`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import keras
from absl import logging

from ssd.errors import UserError

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")

T = TypeVar("T")


class PretrainedError(UserError, ValueError):
    """Pretrained weights that cannot initialize the model; the message names file and layer."""


@dataclass(frozen=True)
class KerasImagenetFile:
    """One of Keras' ImageNet weight files, and what to say when it cannot be had."""

    network: str  # as users know it: "VGG16"
    file_name: str  # its name in Keras' cache
    url: str  # where Keras downloads it from
    md5: str | None  # the hash Keras checks it against; None where Keras checks none
    path_alternative: str  # what --pretrained=PATH accepts instead, completing "a path to ..."


def keras_cache_file(file_name: str) -> Path:
    """Where `keras.utils.get_file` keeps one of Keras' ImageNet files: <keras home>/models/<file>.

    The Keras home is $KERAS_HOME, else ~/.keras (Keras reads KERAS_HOME once, when it is
    imported); like get_file, /tmp/.keras is used instead when that directory is not writable.
    """
    try:
        from keras.src.backend.config import keras_home
        home = keras_home()
    except ImportError:  # a Keras without that private module: its documented default
        home = os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))
    base = os.path.expanduser(home)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return Path(base) / "models" / file_name


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_failed(file: KerasImagenetFile, cached: Path, error: Exception) -> PretrainedError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return PretrainedError(
        f"pretrained source 'imagenet': could not download Keras' {file.network} ImageNet weights "
        f"{file.file_name} from {file.url} ({reason}). Keras reads that file from its "
        f"cache, {cached} ($KERAS_HOME/models/, else ~/.keras/models/): on a machine without "
        f"internet, copy it there (from another machine's cache or the URL above) and run the "
        f"same command again. Alternatives: --pretrained=PATH to {file.path_alternative}, or "
        f"--pretrained=none to train the backbone from its random initialization.")


def fetch_keras_imagenet(file: KerasImagenetFile, read_file: Callable[[Path], T],
                         download: Callable[[], T]) -> T:
    """Keras' ImageNet weights: `read_file(cached path)` when the file is in Keras' cache, else
    `download()`, which lets Keras fetch it; a failed download names the file, the cache and the
    alternatives. Both callables raise PretrainedError for weights that do not fit.
    """
    cached = keras_cache_file(file.file_name)
    if cached.is_file():
        # Read directly: Keras would try to download again a file whose md5 differs, which
        # fails offline; a foreign or truncated file still fails below with its path named.
        if file.md5 is not None and _md5(cached) != file.md5:
            logging.warning("%s: md5 differs from Keras' published %s (%s); loading it anyway",
                            cached, file.file_name, file.md5)
        try:
            return read_file(cached)
        except PretrainedError as e:
            raise PretrainedError(f"{e}. That file is Keras' cache of the ImageNet weights: "
                                  f"replace it with a complete copy of {file.url}, or delete it "
                                  f"so that Keras downloads it again") from None
    try:
        return download()
    except PretrainedError:
        raise
    except Exception as e:  # get_file raises a bare Exception for URL failures, ValueError for md5
        raise _download_failed(file, cached, e) from None


def nothing_loaded(model: keras.Model) -> dict:
    """The report of `--pretrained=none`: every layer keeps its initialization."""
    return {"source": "none", "format": "none", "copied": [], "subsampled": [],
            "input_channels_flipped": [], "left_initialized": [la.name for la in model.layers if la.weights]}
