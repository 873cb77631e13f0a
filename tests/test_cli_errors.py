"""`ssd.cli.run`: a UserError raised by an app's main is one line and exit status 1."""

import pytest

from ssd import cli
from ssd.config.schema import ConfigError
from ssd.data.record_files import DataError
from ssd.errors import UserError
from ssd.modeling.checkpoints import NoCheckpointError


@pytest.mark.parametrize("error", [DataError("data/x-00000-of-00001: not a TFRecord file"),
                                   ConfigError("train.batch_size must be >= 1"),
                                   NoCheckpointError("runs/x holds no checkpoint")])
def test_a_user_error_from_main_is_one_line_and_exit_1(capsys, monkeypatch, error):
    monkeypatch.setattr("sys.argv", ["train.py"])

    def main(argv):
        raise error

    with pytest.raises(SystemExit) as stopped:
        cli.run(main, ["train.py"])
    assert stopped.value.code == cli.ERROR_EXIT_CODE == 1
    assert capsys.readouterr().err == f"train.py: error: {error}\n"


def test_the_library_errors_are_user_errors_and_keep_their_builtin_bases():
    assert issubclass(DataError, UserError) and issubclass(DataError, ValueError)
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    assert issubclass(NoCheckpointError, UserError) and issubclass(NoCheckpointError, FileNotFoundError)


def test_a_bug_is_not_a_user_error(monkeypatch):
    def main(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli.run(main, ["train.py"])
