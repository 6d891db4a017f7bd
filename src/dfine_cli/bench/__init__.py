"""Measurement: model complexity, latency per stage, COCO latency with an engine, and
latency next to accuracy across backends and precisions (``dfine bench ...``)."""
