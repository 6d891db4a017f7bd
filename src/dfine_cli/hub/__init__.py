"""Official weights by name: the table, the cache and the downloads.

- :mod:`~dfine_cli.hub.registry`: the one table of names (``dfine-s-coco``, ``hgnetv2-b0``...).
- :mod:`~dfine_cli.hub.download`: verified, atomic downloads into ``$DFINE_HOME``.
- :mod:`~dfine_cli.hub.resolve`: path-or-name → local file (also ``hf:org/name``).
- :mod:`~dfine_cli.hub.pretrained`: ImageNet HGNetv2 backbones for training.
- :mod:`~dfine_cli.hub.listing`: what ``dfine weights list/download`` report.
"""

from __future__ import annotations

from dfine_cli.hub.registry import WEIGHTS, WeightsEntry, lookup
from dfine_cli.hub.resolve import is_weights_name, resolve_weights

__all__ = ["WEIGHTS", "WeightsEntry", "is_weights_name", "lookup", "resolve_weights"]
