"""Training and evaluation machinery: evaluator, criterion, matcher, train loop, checkpoints.

Nothing in this package is imported by the model modules (:mod:`dfine_cli.models`).
"""
