"""dfine: D-FINE / DEIM real-time object detection as one tool.

The package is a library first: everything the ``dfine`` command does is callable from
Python. The main entry point is :class:`dfine_cli.Detector`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dfine_cli.detector import Detector

__all__ = ["Detector", "__version__"]


def __getattr__(name: str) -> Any:
    # Importing torch costs about a second; `dfine --version` and `dfine --help` should not pay it.
    if name == "Detector":
        from dfine_cli.detector import Detector

        return Detector
    raise AttributeError(f"module 'dfine_cli' has no attribute {name!r}")
