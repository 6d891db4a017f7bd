"""Decoder query selection: the inference form masks invalid cells in place."""

from __future__ import annotations

import torch

from dfine_cli.models.build import build_model
from dfine_cli.models.decoder import generate_anchors


def _tiny_model():
    torch.manual_seed(0)
    return build_model("n", num_classes=3, num_queries=20, num_denoising=0).eval()


def test_cached_invalid_cells_are_those_outside_the_valid_range() -> None:
    model = _tiny_model()
    shapes = [(60, 60), (5, 5)]
    like = torch.zeros(1, 1, 1)
    anchors, valid, invalid = model.decoder._anchors(shapes, like)
    expected_anchors, expected_valid = generate_anchors(shapes)

    assert invalid is not None
    assert torch.equal(anchors, expected_anchors) and torch.equal(valid, expected_valid)
    assert torch.equal(invalid, (~expected_valid[0, :, 0]).nonzero().flatten())
    assert 0 < len(invalid) < valid.shape[1]  # the 60x60 level's border cells


def test_in_place_masking_gives_the_outputs_of_the_multiplied_form(monkeypatch) -> None:
    model = _tiny_model()
    decoder = model.decoder
    seen: list[torch.Tensor] = []
    decoder.enc_output.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].clone()))
    # 832 px: the stride-16 level has 52x52 cells, whose border cells are invalid.
    images = torch.rand(1, 3, 832, 832)
    with torch.inference_mode():
        in_place = model(images)
        assert any(len(cached[2]) for cached in decoder._anchor_cache.values())
        original = decoder._anchors

        def without_indices(shapes, like):
            anchors, valid, _ = original(shapes, like)
            return anchors, valid, None  # the training form: memory * valid

        monkeypatch.setattr(decoder, "_anchors", without_indices)
        multiplied = model(images)

    masked, reference = seen
    assert torch.equal(masked, reference)  # what query selection reads
    assert (masked == 0).all(-1).any()  # and some cells were masked
    assert torch.equal(in_place.logits, multiplied.logits)
    assert torch.equal(in_place.boxes, multiplied.boxes)


def test_training_form_has_no_cached_indices() -> None:
    model = _tiny_model().train()
    _, _, invalid = model.decoder._anchors([(4, 4)], torch.zeros(1))
    assert invalid is None
