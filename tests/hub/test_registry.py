"""The weights table: names, files, AP figures, classes, URL and cache layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfine_cli.coco_names import COCO_NAMES
from dfine_cli.hub.registry import (
    DEFAULT_BASE_URL,
    WEIGHTS,
    base_url,
    cache_path_for_url,
    dfine_home,
    lookup,
)
from dfine_cli.obj365_names import OBJ365_HEAD_NAMES, OBJ365_NAMES


def test_every_name_and_file_of_the_official_release():
    detectors = {n: e.file for n, e in WEIGHTS.items() if e.kind == "detector"}
    assert detectors == {
        **{f"dfine-{s}-coco": f"dfine_{s}_coco.pth" for s in "nsmlx"},
        **{f"dfine-{s}-obj365": f"dfine_{s}_obj365.pth" for s in "smx"},
        **{f"dfine-{s}-obj2coco": f"dfine_{s}_obj2coco.pth" for s in "smx"},
        "dfine-l-obj365": "dfine_l_obj365_e25.pth",
        "dfine-l-obj2coco": "dfine_l_obj2coco_e25.pth",
    }
    backbones = {n: e.file for n, e in WEIGHTS.items() if e.kind == "backbone"}
    assert backbones == {f"hgnetv2-{b.lower()}": f"PPHGNetV2_{b}_stage1.pth" for b in ("B0", "B2", "B4", "B5")}


def test_official_ap_and_classes():
    assert [WEIGHTS[f"dfine-{s}-coco"].ap for s in "nsmlx"] == [0.428, 0.485, 0.523, 0.54, 0.558]
    assert [WEIGHTS[f"dfine-{s}-obj2coco"].ap for s in "smlx"] == [0.507, 0.551, 0.573, 0.593]
    assert [WEIGHTS[f"dfine-{s}-obj365"].ap for s in "smlx"] == [0.31, 0.386, 0.447, 0.495]
    assert WEIGHTS["dfine-s-coco"].class_names == COCO_NAMES
    assert WEIGHTS["dfine-s-obj2coco"].num_classes == 80
    obj = WEIGHTS["dfine-x-obj365"]
    assert obj.num_classes == 366 and obj.class_names == OBJ365_HEAD_NAMES
    assert obj.category_ids[1:4] == (1, 2, 3)
    assert {e.size: e.backbone for e in WEIGHTS.values() if e.kind == "detector"} == {
        "n": "B0", "s": "B0", "m": "B2", "l": "B4", "x": "B5"}


def test_objects365_ids_as_the_official_code_maps_them():
    # The official Objects365→COCO list maps COCO's person, bicycle, car, motorcycle,
    # airplane, bus, train, truck to these Objects365 ids (head row = id + 1).
    assert [OBJ365_NAMES[i] for i in (0, 46, 5, 58, 114, 55, 116, 65)] == [
        "Person", "Bicycle", "Car", "Motorcycle", "Airplane", "Bus", "Train", "Truck"]
    assert len(OBJ365_NAMES) == len(set(OBJ365_NAMES)) == 365
    assert OBJ365_NAMES[-1] == "Table Tennis"


def test_lookup_is_case_insensitive():
    assert lookup(" DFINE-S-COCO ") is WEIGHTS["dfine-s-coco"]
    assert lookup("dfine-n-obj365") is None  # no official N Objects365 weights


def test_base_url_override_and_cache_layout(monkeypatch, tmp_path):
    monkeypatch.delenv("DFINE_WEIGHTS_URL", raising=False)
    monkeypatch.delenv("DFINE_HOME", raising=False)
    assert base_url() == DEFAULT_BASE_URL
    assert dfine_home() == Path.home() / ".cache" / "dfine"
    assert WEIGHTS["dfine-s-coco"].url == DEFAULT_BASE_URL + "dfine_s_coco.pth"
    monkeypatch.setenv("DFINE_WEIGHTS_URL", "http://mirror.local:8080/w")
    monkeypatch.setenv("DFINE_HOME", str(tmp_path))
    entry = WEIGHTS["dfine-s-coco"]
    assert entry.url == "http://mirror.local:8080/w/dfine_s_coco.pth"
    assert entry.cache_path() == tmp_path / "weights" / "mirror.local_8080" / "w" / "dfine_s_coco.pth"


@pytest.mark.parametrize("url", ["http://h/../../etc/passwd", "http://h/a/%2e%2e/b.pth", "http://h/x y/b.pth"])
def test_cache_paths_stay_inside_the_cache(monkeypatch, tmp_path, url):
    monkeypatch.setenv("DFINE_HOME", str(tmp_path))
    path = cache_path_for_url(url)
    assert path.resolve().is_relative_to((tmp_path / "weights").resolve())
