"""benchmarks/gpu_check.py: the CPU path end to end, and the helpers its GPU checks rely on."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
NO_GPU = not torch.cuda.is_available()
gc = load_benchmark("gpu_check")


# --------------------------------------------------------------------------- the CPU path


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU path")
def test_cpu_path_skips_every_check_prints_and_writes_the_report(tmp_path):
    out = tmp_path / "report" / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout holds the JSON object and nothing else
    assert json.loads(out.read_text()) == report
    assert [p.name for p in out.parent.iterdir()] == ["gpu.json"]  # no temporary left
    assert report["schema_version"] == 1 and report["command"] == "gpu_check"
    for key in ("gpu", "driver", "cuda", "torch", "tensorrt", "onnxruntime", "dfine", "python"):
        assert key in report
    assert report["gpu"] is None and report["driver"] is None
    assert report["torch"] == torch.__version__
    assert report["status"] == "skipped"
    assert report["summary"] == {"passed": 0, "failed": 0, "skipped": len(gc.CHECK_NAMES)}
    assert list(report["checks"]) == list(gc.CHECK_NAMES)
    for name, check in report["checks"].items():
        assert check["status"] == "skipped" and check["message"] == "no CUDA device", name
        assert check["figures"] == {} and check["timeout_s"] > 0
    for name in gc.CHECK_NAMES:
        assert f"{name}: skipped: no CUDA device" in proc.stderr.splitlines()


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU path")
def test_only_selects_checks_in_process(capsys):
    assert gc.main(["--only", "ddp", "--only", "parity"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["checks"]) == ["parity", "ddp"]  # the script's order, not the flags'


@pytest.mark.parametrize("argv", [["--only", "nope"], ["--budget-s", "0"], ["--child", "parity"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        gc.parse_args(argv)
    assert exc.value.code == 2


def test_checks_have_unique_names_and_fit_no_single_check_over_the_budget():
    assert len(set(gc.CHECK_NAMES)) == len(gc.CHECKS) == 7
    assert all(0 < c.timeout_s <= gc.DEFAULT_BUDGET_S for c in gc.CHECKS)


# --------------------------------------------------------------------------- pytest summaries


@pytest.mark.parametrize(
    ("text", "counts", "seconds"),
    [
        ("===== 3 passed, 1 skipped, 120 deselected in 12.34s =====",
         {"passed": 3, "skipped": 1, "deselected": 120}, 12.34),
        ("2 passed, 1 warning in 0.50s", {"passed": 2, "warnings": 1}, 0.5),
        ("== 1 failed, 2 passed, 3 errors in 61.00s (0:01:01) ==",
         {"failed": 1, "passed": 2, "errors": 3}, 61.0),
        ("1 error in 2s", {"errors": 1}, 2.0),
        ("===== 5 deselected in 0.12s =====", {"deselected": 5}, 0.12),
        ("no tests ran in 0.01s", {}, 0.01),
    ],
)
def test_parse_pytest_summary(text, counts, seconds):
    output = f"tests/x.py ..s\n\nshort test summary info\nSKIPPED [1] needs a GPU\n{text}\n"
    summary = gc.parse_pytest_summary(output)
    assert summary is not None
    assert summary.counts == counts and summary.seconds == seconds


def test_parse_pytest_summary_takes_the_last_line_and_none_without_one():
    text = "=== 1 passed in 1.00s ===\nmore output\n=== 2 failed, 4 passed in 3.00s ===\n"
    summary = gc.parse_pytest_summary(text)
    assert summary is not None and summary.count("failed") == 2 and summary.seconds == 3.0
    assert gc.parse_pytest_summary("ImportError while loading conftest\nTraceback ...") is None
    assert gc.parse_pytest_summary("") is None


def test_pytest_summary_describe_and_dict():
    summary = gc.parse_pytest_summary("3 passed, 2 skipped, 1 warning in 4.20s")
    assert summary is not None
    assert summary.describe() == "3 passed, 2 skipped in 4.20s"
    data = summary.to_dict()
    assert data["passed"] == 3 and data["skipped"] == 2 and data["failed"] == 0
    assert data["seconds"] == 4.2
    assert gc.PytestSummary({}, 0.01).describe() == "no tests ran in 0.01s"


# --------------------------------------------------------------------------- training figures


def test_overflow_steps_are_the_steps_whose_scale_shrank():
    assert gc.overflow_steps(65536.0, [32768.0, 16384.0, 16384.0, 16384.0, 8192.0]) == [0, 1, 4]
    assert gc.overflow_steps(65536.0, [65536.0] * 5) == []
    assert gc.overflow_steps(1024.0, [1024.0, 2048.0, 1024.0]) == [2]  # growth is no skip
    assert gc.overflow_steps(65536.0, []) == []


def test_loss_trend_ignores_non_finite_losses():
    losses = [10.0, 9.0, float("nan"), 8.0, 7.0, 6.0, float("inf"), 5.0]
    first, last = gc.loss_trend(losses, window=2)
    assert (first, last) == (9.5, 5.5)
    assert gc.loss_trend([4.0, 2.0], window=10) == (4.0, 2.0)  # window shrinks to half
    with pytest.raises(ValueError, match="finite"):
        gc.loss_trend([1.0, float("nan")])


def test_weights_difference():
    initial = {"w": torch.zeros(4), "bn.running_var": torch.ones(2), "steps": torch.tensor(0)}
    full = {"w": torch.tensor([3.0, 0.0, 0.0, 4.0]), "bn.running_var": torch.full((2,), 5.0),
            "steps": torch.tensor(7)}
    same = gc.weights_difference(full, {k: v.clone() for k, v in full.items()}, initial)
    assert same == {"max_abs_diff": 0.0, "diff_norm": 0.0, "update_norm": 5.0, "relative_diff": 0.0}
    resumed = {"w": torch.tensor([3.0, 0.0, 0.0, 4.5]), "bn.running_var": torch.full((2,), 7.0),
               "steps": torch.tensor(9)}
    diff = gc.weights_difference(full, resumed, initial)
    assert diff["max_abs_diff"] == 2.0  # the running statistics count here
    assert diff["diff_norm"] == 0.5 and diff["update_norm"] == 5.0  # ... but not in the norms
    assert diff["relative_diff"] == pytest.approx(0.1)
    frozen = gc.weights_difference(initial, full, initial)
    assert math.isinf(frozen["relative_diff"])


def test_training_flags_are_valid_settings():
    from dfine_cli.engine.config import TrainConfig, merge, parse_set

    flags = [str(f) for f in gc._train_flags(Path("data"), Path("out"))]
    sets = [flags[i + 1] for i, f in enumerate(flags) if f == "--set"]
    cfg = merge(TrainConfig(), parse_set(sets), "--set")
    assert cfg.save_every_steps == gc.TRAIN_KILL_STEP
    assert cfg.warmup_iters == gc.TRAIN_WARMUP_ITERS
    assert "--amp" in flags and "--ema" in flags
    assert flags[flags.index("--device") + 1] == "cuda"
    if "pretrained" in TrainConfig.__dataclass_fields__:  # the run never downloads weights
        assert cfg.pretrained is False
    train_images = gc.SYNTH_IMAGES - round(0.2 * gc.SYNTH_IMAGES)  # synth's split
    assert train_images == gc.TRAIN_STEPS * gc.TRAIN_BATCH  # one epoch of 60 steps


# --------------------------------------------------------------------------- report


def test_assemble_report_status_and_exit_code():
    env = {"gpu": "Some GPU", "driver": "1.0", "cuda": "13.0", "torch": "2.x", "tensorrt": None}
    results = [
        gc.CheckResult("a", "passed", "fine", 1.234, 10, {"x": 1.5}),
        gc.CheckResult("b", "skipped", "no gloo", 0.0, 10),
    ]
    report = gc.assemble_report(env, results, 3.21)
    assert report["schema_version"] == gc.SCHEMA_VERSION and report["status"] == "passed"
    assert report["gpu"] == "Some GPU" and report["tensorrt"] is None
    assert report["summary"] == {"passed": 1, "failed": 0, "skipped": 1}
    assert report["checks"]["a"] == {"status": "passed", "message": "fine", "seconds": 1.23,
                                     "timeout_s": 10, "figures": {"x": 1.5}}
    assert gc.exit_code(report) == 0
    json.dumps(report)
    failed = gc.assemble_report(env, [*results, gc.CheckResult("c", "failed", "broke")], 1.0)
    assert failed["status"] == "failed" and gc.exit_code(failed) == 1
    assert gc.assemble_report(env, results[1:], 1.0)["status"] == "skipped"


def test_check_result_line():
    assert gc.CheckResult("ddp", "skipped", "no CUDA device").line() == "ddp: skipped: no CUDA device"
    line = gc.CheckResult("parity", "passed", "all matched", 2.04).line()
    assert line == "parity: passed: all matched (2.0 s)"


# --------------------------------------------------------------------------- processes


def test_run_with_timeout_returns_the_exit_code():
    code, seconds = gc.run_with_timeout([sys.executable, "-c", "raise SystemExit(3)"], 60,
                                        stdout=subprocess.DEVNULL)
    assert code == 3 and seconds < 60


def test_run_with_timeout_kills_the_process_group(tmp_path):
    marker = tmp_path / "grandchild.txt"
    grandchild = f"import time; time.sleep(2); open({str(marker)!r}, 'w')"
    child = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {grandchild!r}])\ntime.sleep(30)\n"
    start = time.monotonic()
    code, _ = gc.run_with_timeout([sys.executable, "-c", child], 0.5, stdout=subprocess.DEVNULL)
    assert code is None and time.monotonic() - start < 20
    time.sleep(3)
    assert not marker.exists()  # the grandchild died with the group


def test_run_until_file(tmp_path):
    target = tmp_path / "ckpt"
    writer = f"import time; open({str(target)!r}, 'w').close(); time.sleep(30)"
    outcome, code, seconds = gc.run_until_file([sys.executable, "-c", writer], target, 60,
                                               stdout=subprocess.DEVNULL)
    assert (outcome, code) == ("killed", -9) and seconds < 30
    outcome, code, _ = gc.run_until_file([sys.executable, "-c", "pass"], tmp_path / "never", 60)
    assert (outcome, code) == ("exited", 0)
    outcome, code, _ = gc.run_until_file([sys.executable, "-c", "import time; time.sleep(30)"],
                                         tmp_path / "never", 0.5)
    assert outcome == "timeout" and code == -9


@pytest.mark.skipif(not NO_GPU, reason="needs a check that fails without a GPU")
def test_a_crashing_check_is_a_failed_check_with_its_cause(tmp_path):
    from tests.conftest import require_reference

    require_reference()
    parity = next(c for c in gc.CHECKS if c.name == "parity")
    result = gc.run_check(parity, gc.Work(tmp_path), 240)
    assert result.status == "failed"
    assert result.message.startswith("HardwareError: ") and "CUDA" in result.message


def test_a_check_over_its_timeout_fails_with_its_own_partial_figures(tmp_path):
    work = gc.Work(tmp_path)
    work.save_partial(gc.CHECKS[0].name, {"from": "an earlier run"})
    result = gc.run_check(gc.CHECKS[0], work, 0.2)
    assert result.status == "failed" and result.message == "timed out after 0.2 s"
    assert result.figures == {}  # a stale file of an earlier run is not reported


def test_partial_figures_round_trip(tmp_path):
    work = gc.Work(tmp_path)
    work.save_partial("tensorrt", {"n_fp32": {"passed": True}})
    assert json.loads(work.partial_file("tensorrt").read_text()) == {"n_fp32": {"passed": True}}


def test_budget_spent_fails_the_remaining_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "device_problem", lambda: None)
    results = gc.run_checks(gc.CHECKS[:2], gc.Work(tmp_path), budget_s=1.0)
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("budget" in r.message for r in results)


def test_keyed_checkpoint_loads_as_an_official_checkpoint(tmp_path):
    from dfine_cli.checkpoints import read_checkpoint
    from tests.conftest import require_reference

    require_reference()
    work = gc.Work(tmp_path)
    path = work.keyed_checkpoint("n")
    ckpt = read_checkpoint(path)
    assert ckpt.info.config.name == "n" and ckpt.info.num_classes == 80
    stamp = path.stat().st_mtime_ns
    assert work.keyed_checkpoint("n") == path and path.stat().st_mtime_ns == stamp  # made once
