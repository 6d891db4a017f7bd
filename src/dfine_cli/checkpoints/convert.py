"""``dfine weights convert``: any supported checkpoint rewritten in our own format.

The weights are loaded into a model of the detected size before anything is written, so a
file that does not fit is refused instead of copied. Class names and the input size can be
recorded on the way.
"""

from __future__ import annotations

from pathlib import Path

from dfine_cli.checkpoints import ModelInfo
from dfine_cli.errors import DataError, UsageError
from dfine_cli.image_size import ImageSize


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    variant: str | None = None,
    names: str | Path | None = None,
    img_size: ImageSize | None = None,
) -> ModelInfo:
    """Write ``dst`` (our checkpoint format) from ``src`` and return what it records.

    ``variant``: the decoder variant of an official ``.pth`` (``None``: read from the file);
    ``names``: class names as :func:`dfine_cli.data.convert.parse_names` reads them, one per
    class; ``img_size``: the input ``(h, w)`` in pixels to record (``None``: keep the source's).
    """
    from dfine_cli.checkpoints import load_model, save_checkpoint

    if Path(dst).resolve() == Path(src).resolve():
        raise UsageError("destination must differ from the source")
    model, info = load_model(src, variant=variant)  # validates before writing
    if names is not None:
        from dfine_cli.data.convert import parse_names

        loaded = parse_names(names) or []
        if len(loaded) != info.num_classes:
            raise DataError(f"{names} has {len(loaded)} names; the model has {info.num_classes} classes")
        info.class_names = loaded
    if img_size is not None:
        info.img_size = (img_size[0], img_size[1])
    save_checkpoint(dst, model, info)
    return info
