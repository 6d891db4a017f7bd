"""`dfine weights list` / `dfine weights download` and weights names on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfine_cli.cli.main import app
from tests.hub.weights_server import backbone_file, serve


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(monkeypatch):
    """Run the CLI in this process with extra environment variables."""

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        res = CliRunner().invoke(app, list(args))
        return Result(res.exit_code, res.stdout, res.stderr)

    return invoke


def test_list_json_and_table(run, tmp_path):
    env = {"DFINE_HOME": str(tmp_path)}
    res = run("weights", "list", "--json", env=env)
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["schema_version"] == 1 and payload["cache"] == str(tmp_path)
    rows = {r["name"]: r for r in payload["weights"]}
    assert len(rows) == 17 and not any(r["cached"] for r in rows.values())
    assert rows["dfine-l-obj365"]["ap"] == 0.447 and rows["dfine-l-obj365"]["num_classes"] == 366
    assert rows["hgnetv2-b0"]["dataset"] == "ImageNet"
    table = run("weights", "list", env=env)
    assert table.stdout.splitlines()[0].split("\t") == ["name", "size", "backbone", "dataset", "AP", "AP on", "cached"]
    assert "dfine-x-obj2coco\tx\tHGNetv2-B5\tObjects365+COCO\t0.593\tCOCO val2017\tno" in table.stdout


def test_download_then_listed_as_cached(run, tmp_path):
    with serve() as srv:
        srv.put("PPHGNetV2_B0_stage1.pth", backbone_file())
        env = {"DFINE_HOME": str(tmp_path), "DFINE_WEIGHTS_URL": srv.base}
        res = run("weights", "download", "hgnetv2-b0", env=env)
        assert res.returncode == 0, res.stderr
        name, path = res.stdout.strip().split("\t")
        assert name == "hgnetv2-b0" and Path(path).is_file()
        assert "downloading hgnetv2-b0" in res.stderr
        listed = json.loads(run("weights", "list", "--json", env=env).stdout)
        assert {r["name"] for r in listed["weights"] if r["cached"]} == {"hgnetv2-b0"}
        again = run("weights", "download", "hgnetv2-b0", "--json", env=env)
        assert json.loads(again.stdout)["weights"][0]["path"] == path
        assert srv.count("PPHGNetV2_B0_stage1.pth") == 1


def test_download_errors_have_categories(run, tmp_path):
    env = {"DFINE_HOME": str(tmp_path)}
    unknown = run("weights", "download", "dfine-q-coco", env=env)
    assert unknown.returncode == 2 and "unknown weights name(s): dfine-q-coco" in unknown.stderr
    offline = run("weights", "download", "hgnetv2-b0", env=env)  # conftest: closed port
    assert offline.returncode == 6
    lines = offline.stderr.strip().splitlines()
    assert len(lines) == 1 and "place the file by hand at" in lines[0] and "Traceback" not in offline.stderr


def test_train_offline_names_the_way_out(run, tmp_path):
    from dfine_cli.data.synth import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "d", num_images=6, num_classes=2, seed=0, img_size=320)
    res = run("train", "--data", str(tmp_path / "d"), "--img-size", "320", "--epochs", "1",
              "--output", str(tmp_path / "run"), env={"DFINE_HOME": str(tmp_path / "h")})
    assert res.returncode == 6
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: missing dependency: could not download hgnetv2-b0 from ")
    assert str(tmp_path / "h" / "weights") in last and last.endswith("--no-pretrained")
    bad_map = run("train", "--data", str(tmp_path / "d"), "--class-map", "car", env={"DFINE_HOME": str(tmp_path / "h")})
    assert bad_map.returncode == 2 and "--class-map expects dataset=checkpoint pairs" in bad_map.stderr
