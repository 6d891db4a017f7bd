"""Claiming a run folder: no run is overwritten silently, and a failed start leaves nothing;
the metrics chart."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dfine_cli.engine.run_files import claim_new_run, claim_resumed_run, epoch_ticks, render_svg
from dfine_cli.engine.run_lock import LOCK_NAME, RunFolderInUse
from dfine_cli.errors import UsageError


def _finished_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("last.pth", "best.pth", "config.yaml", "metrics.csv", "notes.txt"):
        (folder / name).write_text(name)
    return folder


def test_output_holding_a_run_is_refused_naming_both_ways_out(tmp_path):
    run = _finished_run(tmp_path / "run")
    with pytest.raises(UsageError) as info:
        claim_new_run(run)
    message = str(info.value)
    assert message == (f"run folder {run} is not empty (last.pth, best.pth, config.yaml, metrics.csv, ...); "
                       f"pass --exist-ok to start a new run over it, or --resume {run} to continue that run")
    assert info.value.exit_code == 2
    assert (run / "best.pth").read_text() == "best.pth"  # untouched
    assert not (run / LOCK_NAME).exists()


def test_folder_without_checkpoint_suggests_another_output(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("x")
    with pytest.raises(UsageError, match=r"--exist-ok to start a new run over it, or another --output$"):
        claim_new_run(tmp_path / "run")


def test_exist_ok_removes_the_previous_runs_files_only(tmp_path):
    run = _finished_run(tmp_path / "run")
    folder = claim_new_run(run, exist_ok=True)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "notes.txt"]
    folder.close()
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_exist_ok_removes_the_previous_runs_tensorboard_events(tmp_path):
    run = _finished_run(tmp_path / "run")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"old")
    claim_new_run(run, exist_ok=True).close()
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_empty_or_new_output_is_fine_and_a_new_one_is_removed_if_left_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    folder = claim_new_run(tmp_path / "empty")
    folder.close()
    assert (tmp_path / "empty").is_dir()  # existed before: kept
    folder = claim_new_run(tmp_path / "new" / "run")
    assert folder.created and (tmp_path / "new" / "run" / LOCK_NAME).is_file()
    folder.close()
    assert not (tmp_path / "new" / "run").exists()
    folder = claim_new_run(tmp_path / "kept")
    (tmp_path / "kept" / "last.pth").write_text("x")
    folder.close()
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["last.pth"]


def test_numbered_runs_follow_ultralytics(tmp_path):
    root = tmp_path / "runs"
    first = claim_new_run(None, root=root)
    second = claim_new_run(None, root=root)
    assert (first.path.name, second.path.name) == ("exp", "exp2")
    named = claim_new_run(None, "mine", root=root)
    (named.path / "last.pth").write_text("x")
    again = claim_new_run(None, "mine", root=root)  # taken: numbered, like exist_ok=False
    assert (named.path.name, again.path.name) == ("mine", "mine2")
    reused = claim_new_run(None, "mine3", exist_ok=True, root=root)  # exist_ok: the name itself
    assert reused.path == root / "train" / "mine3"
    for folder in (first, second, again, reused):
        folder.close()
    named.close()
    assert sorted(p.name for p in (root / "train").iterdir()) == ["mine"]  # empty ones removed
    with pytest.raises(UsageError, match="not empty"):
        claim_new_run(root / "train" / "mine")


def test_live_run_folder_is_refused_even_with_exist_ok(tmp_path):
    run = _finished_run(tmp_path / "run")
    # A lock of another host is live (its pid cannot be checked from here).
    (run / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "x", "token": "t"}))
    with pytest.raises(RunFolderInUse, match="is in use: pid 4242 on host elsewhere"):
        claim_new_run(run, exist_ok=True)
    with pytest.raises(RunFolderInUse):
        claim_resumed_run(run)
    assert (run / "best.pth").read_text() == "best.pth"
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == 4242


def test_output_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        claim_new_run(tmp_path / "f")


def _svg_texts(svg: str, cls: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [el for el in root.iter("{http://www.w3.org/2000/svg}text") if el.get("class") == cls]


def test_metrics_svg_has_epoch_ticks_and_min_max_beside_the_axis_not_on_the_titles():
    history = [{"epoch": e, "loss": 10.0 - e, **({"val_AP": 0.05 * e} if e % 2 == 0 else {})}
               for e in range(1, 13)]
    svg = render_svg(history)
    frames = [el for el in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}rect")
              if el.get("class") == "frame"]
    titles = _svg_texts(svg, "title")
    assert [t.text for t in titles] == ["training loss", "validation mAP 50:95"]
    assert len(frames) == 2
    ticks = [int(t.text or "") for t in _svg_texts(svg, "tick-label")]
    assert ticks == [1, 2, 4, 6, 8, 10, 12] * 2  # both panels share the x axis
    labels = _svg_texts(svg, "y-label")
    assert [float(t.text or "") for t in labels] == [9.0, -2.0, 0.6, 0.1]  # max, min per panel
    for frame, title, pair in zip(frames, titles, (labels[:2], labels[2:]), strict=True):
        x, y = float(frame.get("x", 0)), float(frame.get("y", 0))
        bottom = y + float(frame.get("height", 0))
        assert float(title.get("y", 0)) < y  # titles sit above their frame
        for label in pair:  # min/max: left of the y axis, within the frame's height
            assert float(label.get("x", 0)) < x and label.get("text-anchor") == "end"
            assert y < float(label.get("y", 0)) <= bottom + 4
        assert float(pair[0].get("y", 0)) < float(pair[1].get("y", 0))  # max above min


def test_metrics_svg_of_one_epoch_without_evaluation_is_valid():
    svg = render_svg([{"epoch": 1, "loss": float("nan")}])
    assert [t.text for t in _svg_texts(svg, "tick-label")] == ["1", "1"]
    assert [t.text for t in _svg_texts(svg, "empty")] == ["no values yet"] * 2


@pytest.mark.parametrize(("first", "last", "expected"), [
    (1, 1, [1]), (1, 8, list(range(1, 9))), (1, 72, [1, 10, 20, 30, 40, 50, 60, 70]),
    (5, 200, [5, 50, 100, 150, 200]), (3, 5, [3, 4, 5]),
])
def test_epoch_ticks_are_few_and_round(first, last, expected):
    assert epoch_ticks(first, last) == expected
