"""What a weights file holds (``dfine info``): size, variant, classes, input size, format.

One record per file, the same in Python and on the command line: a checkpoint in any
supported format (see :func:`dfine_cli.checkpoints.read_checkpoint`) or an exported ``.onnx``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfine_cli.errors import CheckpointError


def describe_weights(path: str | Path, variant: str | None = None) -> dict[str, Any]:
    """The facts of ``path`` as a JSON-ready mapping.

    For an ``.onnx``: ``format`` (``"onnx"``), ``inputs`` and ``outputs`` (name, dtype, shape)
    and ``opset``. For a checkpoint: ``path``, ``source_format``, ``size``, ``variant``,
    ``num_classes``, ``class_names``, ``category_ids``, ``img_size`` ([h, w] pixels),
    ``backbone``, ``decoder_layers``, ``tensors``, ``float_elements`` (parameters and float
    buffers) and ``has_training_state``. ``variant`` is the decoder variant of an official
    ``.pth`` (``None``: read from the file).
    """
    if Path(path).suffix.lower() == ".onnx":
        from dfine_cli.export.onnx import onnx_summary

        if not Path(path).is_file():
            raise CheckpointError(f"ONNX model not found: {path}")
        return {"format": "onnx", **onnx_summary(Path(path))}
    from dfine_cli.checkpoints import read_checkpoint

    ckpt = read_checkpoint(path, variant=variant)
    cfg = ckpt.info.config
    return {
        "path": str(path),
        "source_format": ckpt.info.source_format,
        "size": cfg.name,
        "variant": cfg.variant,
        "num_classes": cfg.num_classes,
        "class_names": ckpt.info.class_names,
        "category_ids": ckpt.info.category_ids,
        "img_size": list(ckpt.info.img_size),
        "backbone": f"HGNetv2-{cfg.backbone}",
        "decoder_layers": cfg.num_layers,
        "tensors": len(ckpt.state_dict),
        "float_elements": sum(v.numel() for v in ckpt.state_dict.values() if v.is_floating_point()),
        "has_training_state": ckpt.training is not None,
    }
