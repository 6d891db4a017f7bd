"""benchmarks/bench_train_step.py: the step measured is the one `dfine train` runs."""

from __future__ import annotations

import argparse

import pytest
import torch

from tests.helpers import load_benchmark


@pytest.mark.parametrize("contiguous", [False, True])
def test_the_step_runs_channels_last_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch,
                                                           contiguous: bool) -> None:
    import dfine_cli.allocator
    import dfine_cli.models.build as build

    bench = load_benchmark("bench_train_step")
    models: list[torch.nn.Module] = []
    real = build.build_model

    def record(*args: object, **kwargs: object) -> torch.nn.Module:
        models.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return models[-1]

    malloc: list[str] = []
    monkeypatch.setattr(build, "build_model", record)
    monkeypatch.setattr(dfine_cli.allocator, "keep_freed_memory", lambda: malloc.append("set") or "set")
    args = argparse.Namespace(size="n", recipe="dfine", batch=1, img_size=320, threads=1,
                              compile=False, contiguous=contiguous)
    step, _ = bench._make_step(args)
    step()
    weight = models[0].backbone.stem.stem3.conv.weight
    assert weight.grad is not None and malloc == ["set"]
    assert weight.is_contiguous() == contiguous
    assert weight.is_contiguous(memory_format=torch.channels_last) != contiguous
