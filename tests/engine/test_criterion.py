"""Tests of the D-FINE / DEIM criterion: term names and wiring on synthetic model outputs,
gradients, statelessness, distributed normalisation, denoising, and parity with the official
losses (``../shared/reference``, README sections 4 and 7).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dfine_cli.engine.criterion import (
    DFineCriterion,
    LossOutput,
    LossWeights,
    build_criterion,
    deim_criterion,
    dfine_criterion,
)
from dfine_cli.engine.losses import (
    DistillationBalance,
    decoupled_distillation_focal_loss,
    dense_class_targets,
    l1_box_loss,
    paired_box_iou,
    varifocal_loss,
)
from dfine_cli.engine.matcher import HungarianMatcher, matched_pairs, union_matches
from dfine_cli.models.outputs import DenoisingMeta, DetectorOutput, HeadOutput

NUM_CLASSES = 3
REG_MAX = 8

Targets = list[dict[str, torch.Tensor]]


# ---------------------------------------------------------------------------- synthetic data


def _random_boxes(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    centre = 0.25 + 0.5 * torch.rand(*shape, 2, generator=generator)
    size = 0.05 + 0.3 * torch.rand(*shape, 2, generator=generator)
    return torch.cat([centre, size], dim=-1)


def make_targets(counts: Sequence[int], seed: int = 0) -> Targets:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
            "boxes": _random_boxes((n,), g),
        }
        for n in counts
    ]


def _head(
    g: torch.Generator, batch: int, queries: int, classes: int, with_corners: bool
) -> HeadOutput:
    logits = torch.randn(batch, queries, classes, generator=g).requires_grad_()
    boxes = _random_boxes((batch, queries), g).requires_grad_()
    if not with_corners:
        return HeadOutput(logits, boxes)
    corners = torch.randn(batch, queries, 4 * (REG_MAX + 1), generator=g).requires_grad_()
    return HeadOutput(logits, boxes, corners, _random_boxes((batch, queries), g))


def make_outputs(
    targets: Targets,
    *,
    queries: int = 8,
    layers: int = 3,
    encoder_classes: int = NUM_CLASSES,
    dn_groups: int = 0,
    seed: int = 1,
) -> DetectorOutput:
    """Random predictions shaped like a training-mode D-FINE output; every tensor is a leaf."""
    g = torch.Generator().manual_seed(seed)
    batch = len(targets)
    decoder_layers = [_head(g, batch, queries, NUM_CLASSES, True) for _ in range(layers)]
    # all decoder layers refine the same initial reference boxes
    for head in decoder_layers[1:]:
        head.ref_points = decoder_layers[0].ref_points
    outputs = DetectorOutput(
        layers=decoder_layers,
        pre=_head(g, batch, queries, NUM_CLASSES, False),
        encoder=[_head(g, batch, queries, encoder_classes, False)],
        up=torch.tensor([0.5]),
        reg_scale=torch.tensor([4]),
    )
    if dn_groups:
        max_gt = max(len(t["labels"]) for t in targets)
        dn_queries = dn_groups * 2 * max_gt  # a positive and a negative half per group
        dn_layers = [_head(g, batch, dn_queries, NUM_CLASSES, True) for _ in range(layers)]
        for head in dn_layers[1:]:
            head.ref_points = dn_layers[0].ref_points
        positives = [
            torch.tensor(
                [k * 2 * max_gt + i for k in range(dn_groups) for i in range(len(t["labels"]))],
                dtype=torch.int64,
            )
            for t in targets
        ]
        outputs.dn_layers = dn_layers
        outputs.dn_pre = _head(g, batch, dn_queries, NUM_CLASSES, False)
        outputs.dn_meta = DenoisingMeta(
            positive_indices=positives, num_groups=dn_groups, num_split=(dn_queries, queries)
        )
    return outputs


def official_names(class_loss: str, layers: int = 3, encoders: int = 1) -> list[str]:
    """The term names of the official criteria, in their order (README section 4)."""
    names = [f"loss_{class_loss}", "loss_bbox", "loss_giou", "loss_fgl"]
    for i in range(layers - 1):
        names += [f"loss_{n}_aux_{i}" for n in (class_loss, "bbox", "giou", "fgl", "ddf")]
    names += [f"loss_{n}_pre" for n in (class_loss, "bbox", "giou")]
    for i in range(encoders):
        names += [f"loss_{n}_enc_{i}" for n in (class_loss, "bbox", "giou")]
    return names


def _float_terms(result: LossOutput) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in result.terms.items()}


# ---------------------------------------------------------------------------- names and weights


@pytest.mark.parametrize("variant", ["dfine", "deim"])
def test_terms_have_the_official_names_and_order(variant: str) -> None:
    targets = make_targets([3, 2])
    result = build_criterion(variant)(make_outputs(targets), targets)  # type: ignore[arg-type]
    class_loss = "vfl" if variant == "dfine" else "mal"
    assert list(result.terms) == official_names(class_loss)
    assert all(torch.isfinite(v) for v in result.terms.values())


def test_term_count_follows_the_number_of_decoder_layers() -> None:
    targets = make_targets([2])
    result = dfine_criterion()(make_outputs(targets, layers=6), targets)
    assert list(result.terms) == official_names("vfl", layers=6)
    assert len(result.terms) == 4 + 5 * 5 + 3 + 3


def test_terms_are_weighted_and_total_is_their_sum() -> None:
    targets = make_targets([3, 2])
    outputs = make_outputs(targets)
    weights = LossWeights(classification=1.0, bbox=5.0, giou=2.0, fgl=0.15, ddf=1.5)
    weighted = dfine_criterion(weights)(outputs, targets)
    unit = dfine_criterion(LossWeights(1.0, 1.0, 1.0, 1.0, 1.0))(outputs, targets)
    factor = {"vfl": 1.0, "bbox": 5.0, "giou": 2.0, "fgl": 0.15, "ddf": 1.5}
    for name, value in weighted.terms.items():
        kind = name.split("_")[1]
        torch.testing.assert_close(value, unit.terms[name] * factor[kind])
    torch.testing.assert_close(weighted.total, torch.stack(list(weighted.terms.values())).sum())


def test_official_builders_use_the_official_hyper_parameters() -> None:
    dfine, deim = dfine_criterion(), deim_criterion()
    assert (dfine.class_loss, dfine.alpha, dfine.gamma, dfine.zero_nan_terms) == (
        "vfl",
        0.75,
        2.0,
        False,
    )
    assert (deim.class_loss, deim.gamma, deim.mal_alpha, deim.zero_nan_terms) == (
        "mal",
        1.5,
        None,
        True,
    )
    for criterion in (dfine, deim):
        assert criterion.weights == LossWeights(1.0, 5.0, 2.0, 0.15, 1.5)
        assert criterion.matcher == HungarianMatcher(2.0, 5.0, 2.0, alpha=0.25, gamma=2.0)
        assert criterion.use_union_set and criterion.ddf_temperature == 5.0
    with pytest.raises(ValueError):
        build_criterion("rtdetr")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DFineCriterion(class_loss="focal")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- wiring


def test_class_terms_use_own_matching_and_box_terms_the_union() -> None:
    targets = make_targets([3, 2])
    outputs = make_outputs(targets)
    criterion = dfine_criterion(LossWeights(1.0, 1.0, 1.0, 1.0, 1.0))
    result = criterion(outputs, targets)

    matcher = criterion.matcher
    heads = [*outputs.layers, outputs.pre, *outputs.encoder]
    own = {id(h): matcher(h.logits, h.boxes, targets) for h in heads}
    final, aux = outputs.layers[-1], outputs.layers[:-1]
    union = union_matches(
        [
            own[id(final)],
            *(own[id(h)] for h in aux),
            own[id(outputs.pre)],
            own[id(outputs.encoder[0])],
        ]
    )
    num_boxes = 5.0
    num_union = float(sum(len(q) for q, _ in union))
    assert num_union >= num_boxes

    for suffix, head in [
        ("", final),
        ("_aux_0", aux[0]),
        ("_pre", outputs.pre),
        ("_enc_0", outputs.encoder[0]),
    ]:
        # classification: the head's own Hungarian matching, normalised by the number of boxes
        idx = matched_pairs(own[id(head)])
        matched_boxes = torch.cat(
            [t["boxes"][j] for t, (_, j) in zip(targets, own[id(head)], strict=True)]
        )
        labels = torch.cat(
            [t["labels"][j] for t, (_, j) in zip(targets, own[id(head)], strict=True)]
        )
        ious = paired_box_iou(head.boxes[idx], matched_boxes)
        scores, positive = dense_class_targets(head.logits, *idx, labels, ious)
        expected_vfl = varifocal_loss(head.logits, scores, positive, num_boxes)
        torch.testing.assert_close(result.terms[f"loss_vfl{suffix}"], expected_vfl)
        # boxes: the GO-LSD union, normalised by its size
        union_idx = matched_pairs(union)
        union_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, union, strict=True)])
        expected_l1 = l1_box_loss(head.boxes[union_idx], union_boxes, num_union)
        torch.testing.assert_close(result.terms[f"loss_bbox{suffix}"], expected_l1)


def test_ddf_distils_the_final_layer_with_iou_and_confidence_weights() -> None:
    targets = make_targets([3, 2])
    outputs = make_outputs(targets)
    criterion = dfine_criterion(LossWeights(1.0, 1.0, 1.0, 1.0, 1.0))
    result = criterion(outputs, targets)

    heads = [*outputs.layers, outputs.pre, *outputs.encoder]
    union = union_matches([criterion.matcher(h.logits, h.boxes, targets) for h in heads])
    idx = matched_pairs(union)
    union_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, union, strict=True)])
    student, teacher = outputs.layers[1], outputs.layers[-1]
    weights = teacher.logits.detach().sigmoid().amax(-1)
    weights[idx] = paired_box_iou(student.boxes[idx], union_boxes).detach()
    matched = torch.zeros_like(weights, dtype=torch.bool)
    matched[idx] = True
    assert student.corners is not None and teacher.corners is not None
    expected = decoupled_distillation_focal_loss(student.corners, teacher.corners, weights, matched)
    torch.testing.assert_close(result.terms["loss_ddf_aux_1"], expected)

    # the teacher receives no gradient from distillation
    (grad_teacher, grad_student) = torch.autograd.grad(
        result.terms["loss_ddf_aux_1"], [teacher.corners, student.corners], allow_unused=True
    )
    assert grad_teacher is None or float(grad_teacher.abs().sum()) == 0.0
    assert grad_student is not None and float(grad_student.abs().sum()) > 0.0


def test_without_union_set_each_head_uses_its_own_matching() -> None:
    targets = make_targets([3, 2])
    outputs = make_outputs(targets)
    criterion = DFineCriterion(
        class_loss="mal", gamma=1.5, use_union_set=False, weights=LossWeights(1, 1, 1, 1, 1)
    )
    result = criterion(outputs, targets)
    head = outputs.layers[0]
    own = criterion.matcher(head.logits, head.boxes, targets)
    matched_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, own, strict=True)])
    expected = l1_box_loss(head.boxes[matched_pairs(own)], matched_boxes, 5.0)
    torch.testing.assert_close(result.terms["loss_bbox_aux_0"], expected)


def test_perfect_predictions_have_no_box_loss() -> None:
    targets = make_targets([3, 2])
    outputs = make_outputs(targets, queries=6)
    with torch.no_grad():
        for head in [*outputs.layers, outputs.pre, *outputs.encoder]:
            head.logits.fill_(-8.0)
            head.boxes.copy_(torch.tensor([0.9, 0.9, 0.02, 0.02]))  # far-away distractors
            for b, target in enumerate(targets):
                n = len(target["labels"])
                head.boxes[b, :n] = target["boxes"]
                head.logits[b, torch.arange(n), target["labels"]] = 8.0
    result = dfine_criterion()(outputs, targets)
    for name, value in _float_terms(result).items():
        if "bbox" in name or "giou" in name:
            assert value == pytest.approx(0.0, abs=1e-5), name
        if "vfl" in name:
            assert value < 1e-2, name


def test_class_agnostic_encoder_sees_every_box_as_class_zero() -> None:
    targets = make_targets([3, 2])
    outputs = make_outputs(targets, encoder_classes=1)
    result = dfine_criterion()(outputs, targets)
    assert torch.isfinite(result.terms["loss_vfl_enc_0"])
    agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
    head = outputs.encoder[0]
    own = HungarianMatcher()(head.logits, head.boxes, agnostic)
    idx = matched_pairs(own)
    matched_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, own, strict=True)])
    scores, positive = dense_class_targets(
        head.logits,
        *idx,
        torch.zeros(len(idx[0]), dtype=torch.int64),
        paired_box_iou(head.boxes[idx], matched_boxes),
    )
    torch.testing.assert_close(
        result.terms["loss_vfl_enc_0"], varifocal_loss(head.logits, scores, positive, 5.0)
    )


# ---------------------------------------------------------------------------- gradients, state


@pytest.mark.parametrize("variant", ["dfine", "deim"])
def test_gradients_are_finite_and_reach_every_head(variant: str) -> None:
    targets = make_targets([3, 0, 2])  # an image without objects too
    outputs = make_outputs(targets, dn_groups=2)
    result = build_criterion(variant)(outputs, targets)  # type: ignore[arg-type]
    result.total.backward()
    assert outputs.dn_layers is not None and outputs.dn_pre is not None
    heads = [*outputs.layers, outputs.pre, *outputs.encoder, *outputs.dn_layers, outputs.dn_pre]
    for head in heads:
        tensors = [head.logits, head.boxes] + ([head.corners] if head.corners is not None else [])
        for tensor in tensors:
            assert tensor.grad is not None and bool(torch.isfinite(tensor.grad).all())
            assert float(tensor.grad.abs().sum()) > 0


def test_half_precision_predictions_give_float32_terms() -> None:
    targets = make_targets([3, 2])
    outputs = make_outputs(targets, dn_groups=2)
    assert outputs.dn_layers is not None and outputs.dn_pre is not None
    heads = [*outputs.layers, outputs.pre, *outputs.encoder, *outputs.dn_layers, outputs.dn_pre]
    reference = _float_terms(dfine_criterion()(outputs, targets))
    for head in heads:
        head.logits = head.logits.detach().bfloat16().requires_grad_()
        head.boxes = head.boxes.detach().bfloat16().requires_grad_()
        if head.corners is not None and head.ref_points is not None:
            head.corners = head.corners.detach().bfloat16().requires_grad_()
            head.ref_points = head.ref_points.bfloat16()
    result = dfine_criterion()(outputs, targets)
    assert all(v.dtype == torch.float32 for v in result.terms.values())
    result.total.backward()
    assert all(
        bool(torch.isfinite(h.logits.grad).all()) for h in heads if h.logits.grad is not None
    )
    # bfloat16 inputs (8 bits of mantissa) keep the total within a few percent
    assert float(result.total.detach()) == pytest.approx(sum(reference.values()), rel=0.05)


def test_no_state_is_kept_between_calls() -> None:
    criterion = dfine_criterion()
    targets_a, targets_b = make_targets([3, 2], seed=0), make_targets([1, 4], seed=5)
    outputs_a = make_outputs(targets_a, dn_groups=2, seed=1)
    outputs_b = make_outputs(targets_b, dn_groups=3, seed=2)
    first = _float_terms(criterion(outputs_a, targets_a))
    criterion(outputs_b, targets_b)
    again = _float_terms(criterion(outputs_a, targets_a))
    assert first == again
    fresh = _float_terms(dfine_criterion()(outputs_a, targets_a))
    assert first == fresh


def test_images_without_targets_everywhere() -> None:
    targets = make_targets([0, 0])
    result = dfine_criterion()(make_outputs(targets), targets)
    terms = _float_terms(result)
    assert terms["loss_bbox"] == 0.0 and terms["loss_fgl"] == 0.0 and terms["loss_ddf_aux_0"] > 0
    assert terms["loss_vfl"] > 0  # every query is pushed towards background
    assert torch.isfinite(result.total)
    result.total.backward()


def test_deim_zeroes_nan_terms_and_dfine_keeps_them() -> None:
    targets = make_targets([2, 1])
    outputs = make_outputs(targets)
    with torch.no_grad():
        outputs.pre.logits[0, 0, 0] = float("nan")
    deim = _float_terms(deim_criterion()(outputs, targets))
    dfine = _float_terms(dfine_criterion()(outputs, targets))
    assert deim["loss_mal_pre"] == 0.0
    assert all(math.isfinite(v) for v in deim.values())
    assert math.isnan(dfine["loss_vfl_pre"])
    assert math.isfinite(dfine["loss_vfl"])  # other heads are unaffected


# ---------------------------------------------------------------------------- denoising


def test_denoising_terms_use_the_fixed_assignment() -> None:
    targets = make_targets([3, 2])
    groups = 2
    outputs = make_outputs(targets, dn_groups=groups)
    criterion = dfine_criterion(LossWeights(1.0, 1.0, 1.0, 1.0, 1.0))
    result = criterion(outputs, targets)
    assert outputs.dn_layers is not None and outputs.dn_meta is not None

    dn_names = [n for n in result.terms if "_dn_" in n]
    expected_names = []
    for i in range(3):
        kinds = ("vfl", "bbox", "giou", "fgl") + (("ddf",) if i < 2 else ())
        expected_names += [f"loss_{k}_dn_{i}" for k in kinds]
    expected_names += ["loss_vfl_dn_pre", "loss_bbox_dn_pre", "loss_giou_dn_pre"]
    assert dn_names == expected_names
    assert list(result.terms)[: len(official_names("vfl"))] == official_names("vfl")

    positives = outputs.dn_meta.positive_indices
    batch_idx = torch.cat([torch.full_like(p, b) for b, p in enumerate(positives)])
    query_idx = torch.cat(positives)
    gt_boxes = torch.cat([t["boxes"].repeat(groups, 1) for t in targets])
    head = outputs.dn_layers[0]
    expected = l1_box_loss(head.boxes[batch_idx, query_idx], gt_boxes, 5.0 * groups)
    torch.testing.assert_close(result.terms["loss_bbox_dn_0"], expected)

    # DN distillation reuses the matched/unmatched balance of the matching queries (official)
    heads = [*outputs.layers, outputs.pre, *outputs.encoder]
    union = union_matches([criterion.matcher(h.logits, h.boxes, targets) for h in heads])
    main_mask = torch.zeros(2, 8, dtype=torch.bool)
    main_mask[matched_pairs(union)] = True
    teacher = outputs.dn_layers[-1]
    weights = teacher.logits.detach().sigmoid().amax(-1)
    weights[batch_idx, query_idx] = paired_box_iou(head.boxes[batch_idx, query_idx], gt_boxes)
    dn_mask = torch.zeros_like(weights, dtype=torch.bool)
    dn_mask[batch_idx, query_idx] = True
    assert head.corners is not None and teacher.corners is not None
    expected = decoupled_distillation_focal_loss(
        head.corners,
        teacher.corners,
        weights,
        dn_mask,
        balance=DistillationBalance.from_mask(main_mask),
    )
    torch.testing.assert_close(result.terms["loss_ddf_dn_0"], expected)


def test_denoising_with_a_tiny_model() -> None:
    from dfine_cli.models.build import build_model

    torch.manual_seed(0)
    model = build_model(
        "n",
        num_classes=NUM_CLASSES,
        num_denoising=100,
        num_queries=30,
        encoder_hidden_dim=32,
        encoder_ffn_dim=64,
        decoder_hidden_dim=32,
        decoder_ffn_dim=64,
    )
    model.train()
    targets = make_targets([3, 1])
    outputs = model(torch.rand(2, 3, 128, 128), targets)
    assert outputs.dn_layers is not None
    result = dfine_criterion()(outputs, targets)
    dn_terms = {k: v for k, v in result.terms.items() if "_dn_" in k}
    num_layers = len(outputs.layers)
    assert f"loss_vfl_dn_{num_layers - 1}" in dn_terms and "loss_giou_dn_pre" in dn_terms
    assert (
        f"loss_ddf_dn_{num_layers - 2}" in dn_terms
        and f"loss_ddf_dn_{num_layers - 1}" not in dn_terms
    )
    assert all(bool(torch.isfinite(v)) for v in dn_terms.values())
    result.total.backward()


# ---------------------------------------------------------------------------- distributed


def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP thread team
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        targets = make_targets([3] if rank == 0 else [1], seed=rank)
        outputs = make_outputs(targets, seed=10 + rank)
        criterion = dfine_criterion()
        distributed = _float_terms(criterion(outputs, targets))
        heads = [*outputs.layers, outputs.pre, *outputs.encoder]
        union = union_matches([criterion.matcher(h.logits, h.boxes, targets) for h in heads])
        union_size = float(sum(len(q) for q, _ in union))
    finally:
        dist.destroy_process_group()
    local = _float_terms(criterion(outputs, targets))
    torch.save(
        {"distributed": distributed, "local": local, "union": union_size},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


def test_num_boxes_is_averaged_over_processes(tmp_path: Path) -> None:
    # fork: the workers need nothing that this process has not imported already
    mp.start_processes(
        _distributed_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    mean_boxes = (3 + 1) / 2
    mean_union = max((results[0]["union"] + results[1]["union"]) / 2, 1.0)
    for rank, (boxes, result) in enumerate(zip([3, 1], results, strict=True)):
        got, local = result["distributed"], result["local"]
        assert got["loss_vfl"] == pytest.approx(local["loss_vfl"] * boxes / mean_boxes, rel=1e-5), (
            rank
        )
        expected = local["loss_bbox"] * result["union"] / mean_union
        assert got["loss_bbox"] == pytest.approx(expected, rel=1e-5), rank


# ---------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def parity_inputs(reference_dir: Path) -> dict[str, object]:
    return {
        "images": torch.load(reference_dir / "inputs_n.pt", weights_only=True)["images"],
        "state": torch.load(reference_dir / "dfine_n_keyed1234.pth", weights_only=True)["model"],
        "dfine": torch.load(reference_dir / "expected_n.pt", weights_only=True)["train"],
        "deim": torch.load(reference_dir / "expected_deim_n.pt", weights_only=True)["train"],
    }


@pytest.mark.parametrize("variant", ["dfine", "deim"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_losses_match_the_official_criterion(variant: str, layout: str, parity_inputs: dict) -> None:
    """README sections 4 and 7: N, keyed weights, train mode, no denoising, official criterion.

    Also in channels-last, the layout ``dfine train`` uses on the CPU: with torch's own
    channels-last BatchNorm statistics the terms were up to 2e-3 away (``AccurateBatchNorm2d``).

    Every term must agree within relative tolerance 1e-4. The two DDF terms are ~1e-4 in size
    and ill-conditioned in float32 (a KL of two nearly equal distributions): perturbing the
    model's corner logits by 1e-6 relative moves them by up to ~1.5e-4 relative, so they also
    get an absolute tolerance of 1e-7 (under 1e-8 of the total).
    """
    from dfine_cli.checkpoints import load_weights
    from dfine_cli.models.build import build_model

    expected = parity_inputs[variant]
    model = build_model("n", num_classes=80, variant=variant, num_denoising=0)
    # strict, except for the official keys our model recomputes (anchors, aliases of up/reg_scale)
    load_weights(model, parity_inputs["state"], source="dfine_n_keyed1234.pth")
    model.train()
    images = parity_inputs["images"]
    if layout == "channels_last":
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    targets = expected["targets"]
    with torch.no_grad():  # train mode (batch statistics), but no graph is needed here
        outputs = model(images, targets)
        result = build_criterion(variant)(outputs, targets)  # type: ignore[arg-type]

    assert set(result.terms) == set(expected["losses"])
    for name, value in expected["losses"].items():
        torch.testing.assert_close(
            result.terms[name],
            torch.tensor(value),
            rtol=1e-4,
            atol=1e-7,
            msg=lambda m, name=name: f"{name}: {m}",
        )
    torch.testing.assert_close(
        result.total.double(),
        torch.tensor(float(expected["total"]), dtype=torch.float64),
        rtol=1e-4,
        atol=0,
    )


def test_channels_last_gradients_are_as_accurate_as_contiguous_ones(parity_inputs: dict) -> None:
    """The training step's gradients in both layouts, against a float64 run: on this batch
    float32 itself is about 3e-3 from exact (relative L2 over all parameters), in either
    layout; a wrong channels-last backward would be off by order 1."""
    from dfine_cli.checkpoints import load_weights
    from dfine_cli.models.build import build_model

    targets = parity_inputs["dfine"]["targets"]

    def gradients(layout: str, dtype: torch.dtype) -> list[torch.Tensor]:
        model = build_model("n", num_classes=80, variant="dfine", num_denoising=0)
        load_weights(model, parity_inputs["state"], source="dfine_n_keyed1234.pth")
        model.train().to(dtype)
        images = parity_inputs["images"].to(dtype)
        if layout == "channels_last":
            model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        build_criterion("dfine")(model(images, targets), targets).total.backward()
        return [p.grad.double() for p in model.parameters() if p.grad is not None]

    exact = gradients("contiguous", torch.float64)
    scale = torch.cat([g.flatten() for g in exact]).norm()

    def error(grads: list[torch.Tensor]) -> float:
        return float(torch.cat([(g - e).flatten() for g, e in zip(grads, exact, strict=True)]).norm() / scale)

    contiguous, channels_last = error(gradients("contiguous", torch.float32)), error(gradients("channels_last", torch.float32))
    assert contiguous < 1e-2
    assert channels_last < 3 * contiguous
