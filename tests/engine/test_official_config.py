"""An official D-FINE/DEIM YAML given to ``--config``: one line naming the dfine flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfine_cli.cli.main import app
from dfine_cli.engine.config import TrainConfig, load_config_file, merge
from dfine_cli.errors import UsageError
from tests.conftest import REFERENCE

OFFICIAL = REFERENCE / "official_configs" / "dfine" / "dfine" / "dfine_hgnetv2_n_coco.yml"

INLINE = """\
__include__: [../base/missing.yml]
num_classes: 3
epoches: 12
eval_spatial_size: [320, 320]
train_dataloader:
  total_batch_size: 8
  dataset: {type: CocoDetection, img_folder: /d/train, ann_file: /d/train.json}
"""


def test_inline_official_config_gets_one_line_naming_the_flags(tmp_path: Path) -> None:
    path = tmp_path / "deim_hgnetv2_s_custom.yml"
    path.write_text(INLINE)
    with pytest.raises(UsageError) as err:
        load_config_file(path)
    assert str(err.value) == (
        f"{path} is an official D-FINE/DEIM config, which dfine does not read; give its settings "
        "as flags instead: --model s --recipe deim (file name); --data DATASET for "
        "img_folder/ann_file (/d/train, /d/train.json): a folder with images/{train,val} and "
        "annotations/instances_{train,val}.json, or a dataset YAML; --epochs 12 (epoches); "
        "--img-size 320 (eval_spatial_size); --batch-size 8 (total_batch_size); no flag for "
        "num_classes (3): dfine counts the classes of the --data annotations"
    )


def test_official_config_values_from_includes_reach_the_hint() -> None:
    if not OFFICIAL.is_file():
        pytest.skip("../shared/reference/official_configs is not available")
    with pytest.raises(UsageError) as err:
        load_config_file(OFFICIAL)
    message = str(err.value)
    assert "\n" not in message
    for expected in ("--model n --recipe dfine", "--epochs 160 (epochs)", "--img-size 640 (eval_spatial_size)",
                     "--batch-size", "num_classes (80)", "--data DATASET"):
        assert expected in message


def test_cli_exits_2_with_that_one_line(tmp_path: Path) -> None:
    path = tmp_path / "custom.yml"
    path.write_text(INLINE)
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--data", str(tmp_path)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and "is an official D-FINE/DEIM config" in errors[0]
    assert "--epochs 12 (epoches)" in errors[0] and "unknown" not in errors[0]


def test_dfine_configs_and_plain_unknown_keys_are_unchanged(tmp_path: Path) -> None:
    ours = tmp_path / "ours.yml"
    ours.write_text("epochs: 3\nbatch_size: 2\nema: true\nclip_max_norm: 0.1\n")
    assert merge(TrainConfig(), load_config_file(ours), "config").epochs == 3
    typo = tmp_path / "typo.yml"
    typo.write_text("epochz: 3\n")
    with pytest.raises(UsageError, match="unknown config key"):
        merge(TrainConfig(), load_config_file(typo), "config")
