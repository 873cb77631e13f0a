"""Estimator-style mode keys shared by input functions, model functions and the trainer."""


class ModeKeys:
    TRAIN = "train"
    EVAL = "eval"
    PREDICT = "infer"

    ALL = (TRAIN, EVAL, PREDICT)


def check_mode(mode: str) -> str:
    if mode not in ModeKeys.ALL:
        raise ValueError(f"mode must be one of {ModeKeys.ALL}, got {mode!r}")
    return mode
