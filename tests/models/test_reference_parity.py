"""Parity with the official implementation on ``../shared/reference`` (size N).

Comparison rules follow the reference README ("Recommended comparison"): features
elementwise with relative tolerance, detections tie-aware (near-equal scores may swap).
"""

from __future__ import annotations

import pytest
import torch

from dfine_cli import Detector
from dfine_cli.checkpoints import read_checkpoint
from dfine_cli.models.dfine import DeployModel
from tests.conftest import require_reference


def assert_detections_match(labels, boxes, scores, exp_labels, exp_boxes, exp_scores,
                            score_tol: float = 1e-5, box_tol: float = 0.05) -> None:
    torch.testing.assert_close(scores, exp_scores, atol=score_tol, rtol=0)
    for b in range(exp_labels.shape[0]):
        for i in range(exp_labels.shape[1]):
            hit = (
                (labels[b] == exp_labels[b, i])
                & ((scores[b] - exp_scores[b, i]).abs() <= score_tol)
                & ((boxes[b] - exp_boxes[b, i]).abs().amax(-1) <= box_tol)
            )
            assert bool(hit.any()), f"image {b}: expected detection {i} has no match"


def assert_rows_match(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """Every expected row has some actual row within ``tol`` (max-abs), per image."""
    for b in range(expected.shape[0]):
        dist = torch.cdist(expected[b].double(), actual[b].double(), p=float("inf"))
        assert bool((dist.min(dim=1).values <= tol).all()), f"image {b}: unmatched rows"


@pytest.fixture(scope="module")
def ref():
    root = require_reference()
    return {
        "root": root,
        "inputs": torch.load(root / "inputs_n.pt", weights_only=True),
        "dfine": torch.load(root / "expected_n.pt", weights_only=True),
        "deim": torch.load(root / "expected_deim_n.pt", weights_only=True),
    }


def test_features_logits_boxes_match_official(ref):
    det = Detector.from_checkpoint(ref["root"] / "dfine_n_keyed1234.pth")
    model = det.model
    exp = ref["dfine"]
    images = ref["inputs"]["images"]
    with torch.inference_mode():
        feats = model.backbone(images)
        for got, want in zip(feats, exp["backbone_feats"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
        enc = model.encoder(feats)
        for got, want in zip(enc, exp["encoder_feats"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
        out = model.decoder(enc)
    assert_rows_match(out.logits, exp["pred_logits"], 1e-3)
    assert_rows_match(out.boxes, exp["pred_boxes"], 1e-4)


@pytest.mark.parametrize("mode", ["plain", "fused", "fused-channels-last"])
def test_deploy_outputs_match_official(ref, mode):
    det = Detector.from_checkpoint(ref["root"] / "dfine_n_keyed1234.pth")
    module = det.deploy_module(fuse=mode != "plain")
    if mode == "fused-channels-last":
        module.use_channels_last()
    exp = ref["dfine"]
    with torch.inference_mode():
        labels, boxes, scores = module(ref["inputs"]["images"], ref["inputs"]["orig_target_sizes"])
    assert labels.dtype == torch.int64 and labels.shape == (2, 300)
    assert boxes.shape == (2, 300, 4) and scores.shape == (2, 300)
    assert_detections_match(labels, boxes, scores, exp["labels"], exp["boxes"], exp["scores"])


def test_deim_variant_matches_official_deim(ref):
    ckpt = read_checkpoint(ref["root"] / "dfine_n_keyed1234.pth", variant="deim")
    assert ckpt.info.variant == "deim"
    det = Detector.from_checkpoint(ref["root"] / "dfine_n_keyed1234.pth", variant="deim")
    exp = ref["deim"]
    with torch.inference_mode():
        labels, boxes, scores = det.deploy_module()(
            ref["inputs"]["images"], ref["inputs"]["orig_target_sizes"]
        )
    assert_detections_match(labels, boxes, scores, exp["labels"], exp["boxes"], exp["scores"])


def test_dfine_weights_with_deim_decoder_differ(ref):
    """The variant matters: SiLU vs ReLU must change the outputs (no tensor reveals it)."""
    dfine = Detector.from_checkpoint(ref["root"] / "dfine_n_keyed1234.pth")
    with torch.inference_mode():
        _, _, scores = dfine.deploy_module()(
            ref["inputs"]["images"], ref["inputs"]["orig_target_sizes"]
        )
    assert (scores - ref["deim"]["scores"]).abs().max() > 1e-3


def test_deploy_model_is_the_official_contract(ref):
    det = Detector.from_checkpoint(ref["root"] / "dfine_n_keyed1234.pth")
    assert isinstance(det.deploy_module(), DeployModel)
    with torch.inference_mode():
        labels, boxes, scores = det.deploy_module()(
            ref["inputs"]["images"][:1], torch.tensor([[640, 480]])
        )
    assert labels.dtype == torch.int64 and boxes.dtype == torch.float32
    assert scores.dtype == torch.float32
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_cached_tensors_survive_leaving_inference_mode(ref):
    """Anchors/position/bin caches built under inference_mode must serve later grad-mode calls."""
    det = Detector.from_checkpoint(ref["root"] / "dfine_n_keyed1234.pth")
    module = det.deploy_module()
    images = ref["inputs"]["images"][:1]
    sizes = torch.tensor([[640, 480]])
    with torch.inference_mode():
        first = module(images, sizes)
    with torch.no_grad():
        second = module(images, sizes)
    torch.testing.assert_close(first[2], second[2])
