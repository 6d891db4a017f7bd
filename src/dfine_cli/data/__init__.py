"""Datasets: COCO-format reading, dataset preparation (Objects365), conversion, checks, synthesis."""
