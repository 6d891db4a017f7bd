"""transformers' D-FINE and ours agree on the same weights (converted by ``dfine_cli.checkpoints.transformers``).

Both models run in eval mode on one fixed random 640×640 batch. transformers' model has no
input normalisation (pixels in 0..1, like ours) and selects queries the same way. Rows are
compared tie-aware, as the reference README recommends: near-equal encoder scores may put
the same queries in another order, so rows are matched as sets and the sorted scores
elementwise.

The comparison runs in float64. With random (untrained, BatchNorm-calibrated) weights,
float32 rounding alone moves logits by up to ~1e-3 between two correct implementations
(sorted scores ~5e-5, size N). In float64 the models agree to ~1e-6 (N) to ~6e-5 (X) on
logits; all of that comes from transformers computing the encoder's sine position
embedding in float64 where the official code (and ours) uses float32: with that one
function computed in float32, X agrees to 1e-11.

Known difference (tested below): a transformers config with
``decoder_activation_function="silu"`` only changes the decoder layers' feed-forward
activation; its MLP heads stay ReLU. DEIM (our ``variant="deim"``) uses SiLU in both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfine_cli.checkpoints import load_weights, read_checkpoint
from dfine_cli.models.build import build_model_from_config
from dfine_cli.models.outputs import HeadOutput
from dfine_cli.models.presets import ModelConfig
from tests.models.hf_helpers import calibrate_batchnorm_, make_hf_dfine_config, randomize_

transformers = pytest.importorskip("transformers")

LOGIT_TOL = 1e-3
BOX_TOL = 1e-4
SCORE_TOL = 1e-5


def images() -> torch.Tensor:
    return torch.rand(2, 3, 640, 640, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def hf_model(size: str, folder: Path, variant: str = "dfine") -> torch.nn.Module:
    """A randomly weighted transformers model, saved with ``save_pretrained`` to ``folder``."""
    model = transformers.DFineForObjectDetection(make_hf_dfine_config(size, variant=variant)).eval()
    randomize_(model, seed=1)
    calibration = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(1))
    calibrate_batchnorm_(model, calibration)
    model.save_pretrained(folder)
    return model.double()


def our_model(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_model_from_config(cfg).eval()
    load_weights(model, state, source="transformers checkpoint")
    return model.double()


def assert_rows_match(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """Per image, the two sets of rows match: each row has a partner within ``tol`` (max-abs)."""
    for b in range(expected.shape[0]):
        close = torch.cdist(expected[b].double(), actual[b].double(), p=float("inf")) <= tol
        assert bool(close.any(dim=1).all()), f"image {b}: {int((~close.any(dim=1)).sum())} rows unmatched"
        assert bool(close.any(dim=0).all()), f"image {b}: {int((~close.any(dim=0)).sum())} rows extra"


def assert_same_detections(hf_out: object, ours: HeadOutput) -> None:
    hf_logits, hf_boxes = hf_out.logits, hf_out.pred_boxes  # type: ignore[attr-defined]
    assert ours.logits.shape == hf_logits.shape and ours.boxes.shape == hf_boxes.shape
    # not degenerate: queries differ from each other (per image, across the query axis)
    assert float(hf_logits.std(dim=1).mean()) > 0.1 and float(hf_boxes.std(dim=1).mean()) > 0.01
    sorted_scores = [t.sigmoid().flatten(1).sort(dim=1).values for t in (ours.logits, hf_logits)]
    torch.testing.assert_close(*sorted_scores, atol=SCORE_TOL, rtol=0)
    assert_rows_match(ours.logits, hf_logits, LOGIT_TOL)
    assert_rows_match(ours.boxes, hf_boxes, BOX_TOL)


@pytest.mark.parametrize(
    "size",
    [
        "n",
        "s",
        pytest.param("m", marks=pytest.mark.slow),
        pytest.param("l", marks=pytest.mark.slow),
        pytest.param("x", marks=pytest.mark.slow),
    ],
)
def test_outputs_match_transformers(size: str, tmp_path: Path) -> None:
    hf = hf_model(size, tmp_path)
    loaded = read_checkpoint(tmp_path)
    assert loaded.info.config.name == size and loaded.info.source_format == "transformers"
    ours = our_model(loaded.info.config, loaded.state_dict)
    x = images()
    with torch.no_grad():
        hf_out = hf(pixel_values=x)
        our_out = ours(x)
        our_feats = ours.encoder(ours.backbone(x))
    assert isinstance(our_out, HeadOutput)
    for ours_map, hf_map in zip(our_feats, hf_out.encoder_last_hidden_state, strict=True):
        torch.testing.assert_close(ours_map, hf_map, rtol=1e-5, atol=1e-5)
    assert_same_detections(hf_out, our_out)


def test_silu_decoder_of_transformers_keeps_relu_heads(tmp_path: Path) -> None:
    """An HF SiLU model is DEIM's decoder activation with D-FINE's ReLU MLP heads."""
    hf = hf_model("n", tmp_path, variant="deim")
    loaded = read_checkpoint(tmp_path)
    cfg = loaded.info.config
    # read_checkpoint reproduces transformers: SiLU decoder layers, ReLU heads.
    assert (cfg.variant, cfg.decoder_activation, cfg.mlp_activation) == ("deim", "silu", "relu")
    x = images()[:1]
    with torch.no_grad():
        hf_out = hf(pixel_values=x)
        as_transformers = our_model(cfg, loaded.state_dict)(x)
        as_deim = our_model(cfg.replace(mlp_activation="silu"), loaded.state_dict)(x)
    assert isinstance(as_transformers, HeadOutput) and isinstance(as_deim, HeadOutput)
    assert_same_detections(hf_out, as_transformers)
    score_gap = (as_deim.logits.sigmoid().flatten(1).sort(dim=1).values
                 - hf_out.logits.sigmoid().flatten(1).sort(dim=1).values).abs().max()
    assert float(score_gap) > 100 * SCORE_TOL
