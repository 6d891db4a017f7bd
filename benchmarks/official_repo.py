"""The official D-FINE package from a checkout, for the benchmarks that run it side by side.

The checkout is used read-only and only by the benchmark scripts; nothing in ``dfine_cli``
imports it.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any


def official_package(repo: Path) -> Any:
    """The official ``src`` package of the checkout ``repo`` (``src.core``, ``src.optim``...).

    Its modules import TensorBoard, calflops and wandb at load time; no model, loss or
    optimizer needs them, so where they are not installed empty stand-ins take their place.
    """
    for name, attr in (("torch.utils.tensorboard", "SummaryWriter"),
                       ("calflops", "calculate_flops"), ("wandb", "init")):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            setattr(stub, attr, None)
            sys.modules[name] = stub
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    import src  # type: ignore[import-not-found]
    import src.core  # loads the registry the configurations use
    import src.optim

    return src
