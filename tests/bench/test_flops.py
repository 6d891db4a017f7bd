"""`dfine bench info`: parameters and FLOPs of every size against the official figures."""

from __future__ import annotations

import json

import pytest

from dfine_cli.bench.flops import OFFICIAL, difference_note, model_complexity
from dfine_cli.models.presets import preset

# Parameters of the official deploy model as tools/benchmark/get_info.py prints them.
OFFICIAL_COUNTER_PARAMS = {"n": 3_753_799, "s": 10_237_491}


@pytest.fixture(scope="module")
def complexities():
    return {size: model_complexity(preset(size, num_classes=80), (640, 640)) for size in "nsmlx"}


@pytest.mark.parametrize("size", ["n", "s"])
def test_parameters_equal_the_official_counter(complexities, size):
    assert complexities[size].params_deploy == OFFICIAL_COUNTER_PARAMS[size]


@pytest.mark.parametrize("size", list("nsmlx"))
def test_every_size_is_near_the_readme_table(complexities, size):
    result, official = complexities[size], OFFICIAL[size]
    assert result.comparable
    assert abs(result.params_deploy / 1e6 - official.params_m) <= 0.8  # README rounds to 1M
    # convolutions + matrix products vs calflops' total (README rounds it): within 3%
    assert result.gflops == pytest.approx(official.counter_gflops or official.gflops, rel=0.03)
    assert result.gmacs == pytest.approx(result.gflops / 2)


def test_counted_operators_and_note(complexities):
    n = complexities["n"]
    assert set(n.flops_by_operator) <= {"aten.convolution", "aten.mm", "aten.addmm", "aten.bmm",
                                        "aten._scaled_dot_product_flash_attention",
                                        "aten._scaled_dot_product_efficient_attention"}
    assert n.flops == sum(n.flops_by_operator.values())
    # calflops on the same deploy model: 7.165 GFLOPs, of which 3.547 GMACs in conv/linear
    assert n.gflops == pytest.approx(7.165, rel=0.03) and n.params_total > n.params_deploy
    assert "equal the official counter" in difference_note(n)


def test_flops_scale_with_input_size():
    small = model_complexity(preset("n", num_classes=80), (320, 320))
    assert not small.comparable and "differs" in difference_note(small)
    assert small.gflops < 7.0 / 2  # backbone/encoder scale with area, the 300 queries do not


def test_bench_info_cli_json():
    from typer.testing import CliRunner

    from dfine_cli.cli.main import app

    res = CliRunner().invoke(app, ["bench", "info", "n", "s", "--json"])
    assert res.exit_code == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["schema_version"] == 1 and payload["command"] == "bench info"
    first = payload["models"][0]
    assert first["params_deploy"] == 3_753_799 and first["official"]["counter_gflops"] == 7.165
    assert first["counter"] == "torch.utils.flop_counter.FlopCounterMode"
