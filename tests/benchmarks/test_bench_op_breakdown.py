"""benchmarks/bench_op_breakdown.py: operator time by kind, next to the measured peaks."""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark


def _rows(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.splitlines() if line and not line.startswith("#")]


def test_torch_time_is_split_by_kind_with_flop_rates(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("bench_op_breakdown")
    argv = ["--sizes", "n", "--img-size", "320", "--iters", "2", "--warmup", "1",
            "--threads", "1", "--paths", "torch:fp32", "--top", "3"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    peaks = next(line for line in out.splitlines() if line.startswith("# measured peaks"))
    assert "conv fp32" in peaks and "matmul fp32" in peaks
    rows = {row[2]: row for row in _rows(out)[1:] if row[1] == "torch:fp32"}
    assert {"conv", "linear/matmul", "total"} <= set(rows)
    conv = rows["conv"]
    assert float(conv[3]) > 0 and float(conv[5]) > 0 and float(conv[6]) > 0  # ms, GFLOPs, GFLOP/s
    total = rows.pop("total")
    # the kinds add up to the total, and the total row carries the time at the measured peak
    assert sum(float(row[3]) for row in rows.values()) == pytest.approx(float(total[3]), rel=0.01)
    assert total[7].startswith("at fp32 peak ") and float(total[7].split()[3]) > 0
    assert sum(1 for line in out.splitlines() if line.startswith("#   n torch:fp32")) == 3


def test_openvino_counters_are_split_by_kind_and_precision(
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openvino")
    bench = load_benchmark("bench_op_breakdown")
    argv = ["--sizes", "n", "--img-size", "320", "--iters", "1", "--warmup", "1",
            "--threads", "1", "--paths", "openvino:fp32"]
    assert bench.main(argv) == 0
    rows = [row for row in _rows(capsys.readouterr().out)[1:] if row[1] == "openvino:fp32"]
    kinds = {row[2] for row in rows}
    assert "conv (F32)" in kinds and "total" in kinds
    assert all(float(row[3]) > 0 for row in rows)


def test_a_path_this_machine_cannot_run_is_reported_not_raised(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("bench_op_breakdown")

    def fail(*args: object) -> None:
        raise RuntimeError("bf16 is not supported on this CPU\nsecond line")

    monkeypatch.setattr(bench, "_loaded", fail)
    monkeypatch.setattr(bench, "measured_peaks", lambda threads, bf16: {"conv fp32": 1.0})
    argv = ["--sizes", "n", "--img-size", "320", "--paths", "torch:bf16"]
    assert bench.main(argv) == 0
    assert "n\ttorch:bf16\tn/a (bf16 is not supported on this CPU)" in capsys.readouterr().out
