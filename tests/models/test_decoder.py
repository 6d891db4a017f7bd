"""Decoder query selection and value sampling: the inference forms against the training form."""

from __future__ import annotations

import torch

from dfine_cli.models import decoder as decoder_module
from dfine_cli.models import deformable_attention as attention_module
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


def test_inference_forms_give_the_outputs_of_the_multiplied_form(monkeypatch) -> None:
    """Three forms of query selection and sampling: memory rows sampled (CPU inference,
    the default), invalid cells zeroed in place with ``grid_sample`` (exports, other
    devices), and the training form (memory multiplied by the valid mask)."""
    model = _tiny_model()
    decoder = model.decoder
    selected: list[torch.Tensor] = []  # what query selection scores: enc_output's output
    decoder.enc_score_head.register_forward_hook(
        lambda _m, inputs, _out: selected.append(inputs[0].clone()))
    enc_inputs: list[torch.Tensor] = []
    decoder.enc_output.register_forward_hook(
        lambda _m, inputs, _out: enc_inputs.append(inputs[0].clone()))
    # 832 px: the stride-16 level has 52x52 cells, whose border cells are invalid.
    images = torch.rand(1, 3, 832, 832)
    sampled_rows: list[torch.Tensor] = []
    sample_rows = attention_module.deformable_sample_rows
    monkeypatch.setattr(attention_module, "deformable_sample_rows",
                        lambda memory, *rest: sampled_rows.append(memory) or sample_rows(memory, *rest))
    with torch.inference_mode():
        rows = model(images)
        assert len(sampled_rows) == decoder.num_layers  # every layer sampled the memory rows
        assert any(len(cached[2]) for cached in decoder._anchor_cache.values())
        monkeypatch.setattr(decoder_module, "_samples_memory_rows", lambda memory: False)
        in_place = model(images)
        original = decoder._anchors

        def without_indices(shapes, like):
            anchors, valid, _ = original(shapes, like)
            return anchors, valid, None  # the training form: memory * valid

        monkeypatch.setattr(decoder, "_anchors", without_indices)
        multiplied = model(images)

    rows_selected, in_place_selected, reference = selected
    # enc_output works row by row: the rows form's fix-up of the invalid rows is exact
    assert torch.equal(rows_selected, reference) and torch.equal(in_place_selected, reference)
    assert (enc_inputs[-1] == 0).all(-1).any()  # and some cells were masked
    assert not (enc_inputs[0] == 0).all(-1).any()  # the rows form leaves the memory whole
    assert torch.equal(in_place.logits, multiplied.logits)
    assert torch.equal(in_place.boxes, multiplied.boxes)
    # sampling rows sums the same terms in another order
    torch.testing.assert_close(rows.logits, multiplied.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows.boxes, multiplied.boxes, rtol=1e-5, atol=1e-6)
    assert len(sampled_rows) == decoder.num_layers  # and only there


def test_training_form_has_no_cached_indices() -> None:
    model = _tiny_model().train()
    _, _, invalid = model.decoder._anchors([(4, 4)], torch.zeros(1))
    assert invalid is None
