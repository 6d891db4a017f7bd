"""`dfine data ...` end to end: results on stdout, one error line on stderr, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from dfine_cli.cli.main import app

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
BCCD = SHARED / "data" / "bccd" / "BCCD"

runner = CliRunner()


def dfine(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _json(result: Any) -> dict[str, Any]:
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # exactly one JSON object on stdout
    payload = json.loads(lines[0])
    assert payload["schema_version"] == 1
    return payload


def _one_error_line(result: Any, code: int, text: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "shapes"
    result = dfine("data", "synth", out, "--images", "10", "--img-size", "64", "--json")
    assert result.exit_code == 0, result.stderr
    payload = _json(result)
    assert payload["class_names"] == ["square", "circle", "triangle"]
    assert payload["train_images"] + payload["val_images"] == 10
    return out


def test_synth_validate_stats(shapes: Path) -> None:
    result = dfine("data", "validate", shapes, "--json")
    assert result.exit_code == 0, result.stderr
    payload = _json(result)
    assert payload["ok"] and payload["errors"] == 0
    assert [s["split"] for s in payload["splits"]] == ["train", "val"]

    result = dfine("data", "validate", shapes, "--split", "val")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].split("\t") == [
        "split",
        "check",
        "severity",
        "count",
        "example",
    ]

    result = dfine("data", "stats", shapes, "--json")
    assert result.exit_code == 0, result.stderr
    stats = _json(result)["splits"][0]
    assert stats["split"] == "train" and stats["images"] == 8
    assert [c["name"] for c in stats["classes"]] == ["square", "circle", "triangle"]
    assert "boxes per image" in dfine("data", "stats", shapes).stdout


def test_synth_refuses_a_non_empty_folder(shapes: Path) -> None:
    _one_error_line(dfine("data", "synth", shapes), 2, "--overwrite")
    _one_error_line(dfine("data", "synth", shapes / "new", "--classes", "9"), 2, "--classes")


def test_validate_exit_codes(shapes: Path, tmp_path: Path) -> None:
    data = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    images = shapes / "images" / "train"
    data["annotations"][0]["bbox"] = [1, 1, 0, 5]  # warning only
    (tmp_path / "warn.json").write_text(json.dumps(data))
    result = dfine("data", "validate", tmp_path / "warn.json", "--images", images)
    assert result.exit_code == 0, result.stderr
    assert "zero_area_box" in result.stdout and "OK with warnings" in result.stderr

    data["images"][0]["file_name"] = "missing.jpg"  # an error
    (tmp_path / "err.json").write_text(json.dumps(data))
    result = dfine("data", "validate", tmp_path / "err.json", "--images", images, "--json")
    assert result.exit_code == 3
    payload = _json(result)
    assert not payload["ok"] and payload["errors"] == 1
    assert {i["check"] for i in payload["splits"][0]["issues"]} == {
        "missing_image",
        "zero_area_box",
    }


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (("data", "validate", "{tmp}/nope"), 3, "dataset not found"),
        (("data", "validate", "{tmp}/a.json"), 2, "--images is required"),
        (("data", "validate", "{tmp}/bad.json", "--images", "{tmp}"), 3, "invalid JSON"),
        (("data", "stats", "{tmp}/bad.json", "--images", "{tmp}"), 3, "invalid JSON"),
        (("data", "remap-obj365", "--base-dir", "{tmp}/nope"), 3, "base directory not found"),
        (("data", "resize-obj365", "--base-dir", "{tmp}"), 3, "run remap-obj365 first"),
        (
            ("data", "convert", "--from", "voc", "{tmp}/nope", "--out", "{tmp}/o.json"),
            3,
            "not found",
        ),
        (
            ("data", "convert", "--from", "yolo", "{tmp}", "--out", "{tmp}/o.json"),
            3,
            "nothing to convert",
        ),
        (
            ("data", "convert", "--from", "yolo", "{tmp}", "--out", "{tmp}/o.json",
             "--names", "{tmp}/missing-names.txt"),
            3,
            "--names file not found",
        ),
    ],
)
def test_bad_inputs_fail_with_one_line(
    tmp_path: Path, args: tuple[str, ...], code: int, text: str
) -> None:
    (tmp_path / "bad.json").write_text('{"images": [')
    (tmp_path / "classes.txt").write_text("a\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    _one_error_line(dfine(*(a.format(tmp=tmp_path) for a in args)), code, text)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial output


def test_unknown_source_format_is_a_usage_error(tmp_path: Path) -> None:
    result = dfine("data", "convert", "--from", "labelme", tmp_path, "--out", tmp_path / "o.json")
    assert result.exit_code == 2


def _tiny_obj365(base: Path) -> None:
    for split, ids in (("train", range(1, 4)), ("val", range(10, 14))):
        images, annotations = [], []
        for i in ids:
            name = f"images/v1/patch0/{i}.jpg"
            (base / split / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (80, 60) if i % 2 else (30, 20), (i, 2 * i, 3 * i)).save(
                base / split / name
            )
            images.append({"height": 1, "id": i, "license": 1, "width": 1, "file_name": name})
            annotations.append(
                {
                    "id": 100 + i,
                    "iscrowd": 0,
                    "area": 20.0,
                    "bbox": [1.0, 2.0, 4.0, 5.0],
                    "image_id": i,
                    "category_id": 1,
                }
            )
        coco = {
            "images": images,
            "annotations": annotations,
            "categories": [{"name": "person", "id": 1}],
        }
        (base / split / f"zhiyuan_objv2_{split}.json").write_text(json.dumps(coco))


def test_obj365_remap_then_resize(tmp_path: Path) -> None:
    base = tmp_path / "data"
    _tiny_obj365(base)
    result = dfine("data", "remap-obj365", "--base-dir", base, "--new-val-size", "2", "--json")
    assert result.exit_code == 0, result.stderr
    remap = _json(result)
    assert (remap["moved_images"], remap["train_images"], remap["val_images"]) == (2, 5, 2)
    assert remap["peak_rss_mb"] is None or remap["peak_rss_mb"] > 0
    assert (base / "train" / "images_from_val" / "v1" / "patch0" / "12.jpg").is_file()

    victim = base / "train" / "images" / "v1" / "patch0" / "2.jpg"
    victim.write_bytes(b"\xff\xd8\xff broken")
    result = dfine(
        "data", "resize-obj365", "--base-dir", base, "--max-size", "64", "--workers", "1"
    )
    _one_error_line(result, 3, "1 image(s) failed")
    assert "failed: images/v1/patch0/2.jpg" in result.stderr
    assert not (base / "train" / "new_zhiyuan_objv2_train_resized.json").exists()

    result = dfine(
        "data", "resize-obj365", "--base-dir", base, "--max-size", "64", "--skip-bad", "--json"
    )
    assert result.exit_code == 0, result.stderr
    splits = _json(result)["splits"]
    assert [(s["images"], len(s["failures"])) for s in splits] == [(4, 1), (2, 0)]
    out = json.loads((base / "train" / "new_zhiyuan_objv2_train_resized.json").read_text())
    resized = {im["id"]: (im["file_name"], im["width"], im["height"]) for im in out["images"]}
    assert resized[1] == ("images/v1/patch0/1_resized.jpg", 64, 48)
    assert resized[12] == (
        "images_from_val/v1/patch0/12.jpg",
        30,
        20,
    )  # small: size taken from the file


@pytest.mark.skipif(not BCCD.is_dir(), reason="shared BCCD data not available")
def test_convert_bccd_then_validate_reports_degenerate_boxes(tmp_path: Path) -> None:
    result = dfine(
        "data", "convert", "--from", "voc", BCCD, "--out", tmp_path / "all.json", "--json"
    )
    assert result.exit_code == 0, result.stderr
    summary = _json(result)
    assert (summary["images"], summary["annotations"]) == (364, 4888)
    result = dfine(
        "data",
        "validate",
        tmp_path / "all.json",
        "--images",
        BCCD / "JPEGImages",
        "--fast",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    issues = _json(result)["splits"][0]["issues"]
    assert [(i["check"], i["count"]) for i in issues] == [("zero_area_box", 2)]
