"""The Estimator-shaped task loop: model function, training, distribution, evaluation, summaries, run safety."""
