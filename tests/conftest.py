import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras.src.backend.config as keras_config  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras home (what $KERAS_HOME sets when Keras is imported) for this test only."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    return home
