"""benchmarks/bench_cpu_paths.py: bad inputs end as one line naming their cause."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.helpers import load_benchmark


def _run(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    bench = load_benchmark("bench_cpu_paths")
    monkeypatch.setattr(sys, "argv", ["bench_cpu_paths.py", *argv])
    try:
        return bench.run_script(bench.main)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "q"], "argument --sizes: invalid choice: 'q'"),
    (["--sizes", "n", "--keyed", "--reference", "{tmp}"], "keyed weights need {tmp}/official_keys_n.tsv"),
    (["--sizes", "n", "--official", "{tmp}", "--reference", "{ref}"],
     "--official {tmp}: not a checkout of the official D-FINE repository"),
    (["--sizes", "--weights", "{tmp}/missing.pth", "--data", "{tmp}"], "--weights {tmp}/missing.pth: no such file"),
    (["--sizes", "--weights", "{ref}/official_keys_n.tsv", "--data", "{tmp}/none"], "--data {tmp}/none: no such dataset"),
])
def test_usage_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path, argv: list[str], message: str) -> None:
    ref = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
    if "{ref}" in " ".join(argv) and not (ref / "official_keys_n.tsv").is_file():
        pytest.skip("needs ../shared/reference")
    argv = [a.format(tmp=tmp_path, ref=ref) for a in argv]
    assert _run(monkeypatch, *argv) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path, ref=ref) in err
    assert "Traceback" not in err


def test_a_cause_dfine_names_ends_with_its_exit_code(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    corrupt = tmp_path / "bad.pth"
    corrupt.write_bytes(b"junk")
    (tmp_path / "data").mkdir()
    code = _run(monkeypatch, "--sizes", "--weights", str(corrupt), "--data", str(tmp_path / "data"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3  # the dataset (no val annotations) is opened first: a data error
    assert err[-1].startswith("bench_cpu_paths.py: error: ") and "val annotations" in err[-1]
