"""The mixed-precision ONNX an FP16 engine is built from, checked on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from dfine_cli.checkpoints import load_model
from dfine_cli.errors import UsageError
from dfine_cli.export.engine_check import TOLERANCES, check_outputs
from dfine_cli.export.mixed_precision import (
    MixedPrecisionDeploy,
    describe_onnx,
    export_mixed_precision_onnx,
    select_modules,
)
from tests.helpers import tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    model, info = load_model(tiny_checkpoint(tmp_path_factory.mktemp("fp16") / "tiny.pth"))
    return model.eval(), info


def test_select_modules_globs_and_errors(tiny_model):
    model, _ = tiny_model
    chosen = select_modules(model, ["model.decoder.dec_bbox_head.*"])
    assert chosen and all(name.startswith("decoder.dec_bbox_head.") for name in chosen)
    with pytest.raises(UsageError, match="names no module"):
        select_modules(model, ["decoder.nonexistent"])


def test_mixed_precision_module_runs_half_with_fp32_islands(tiny_model):
    model, _ = tiny_model
    module = MixedPrecisionDeploy(model, keep_fp32=["decoder.dec_bbox_head"]).eval()
    assert next(module.model.backbone.parameters()).dtype == torch.float16
    assert next(module.model.decoder.dec_bbox_head.parameters()).dtype == torch.float32
    with torch.inference_mode():
        labels, boxes, scores = module(torch.rand(1, 3, 256, 256), torch.tensor([[640, 480]]))
    assert boxes.dtype == torch.float32 and scores.dtype == torch.float32 and labels.shape == (1, 300)


def test_fp16_onnx_agrees_with_torch_within_the_fp16_tolerance(tiny_model, tmp_path):
    """The FP16 ONNX an FP16 engine is built from, run by ONNX Runtime on the CPU."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from dfine_cli.export.onnx import check_inputs
    from dfine_cli.models.dfine import DeployModel

    model, info = tiny_model
    path = export_mixed_precision_onnx(model, info, tmp_path / "fp16.onnx", img_size=(256, 256),
                                       keep_fp32=["decoder.dec_bbox_head"])
    described = describe_onnx(path)
    assert described.precision == "fp16" and described.batch is None
    assert described.img_size == (256, 256) and described.class_names == info.class_names
    proto = onnx.load(str(path))
    kinds = {t.data_type for t in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds and onnx.TensorProto.FLOAT in kinds
    assert json.loads({p.key: p.value for p in proto.metadata_props}["keep_fp32"]) == [
        "decoder.dec_bbox_head"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = DeployModel(model).eval()
    for batch in (1, 2):
        images, sizes = check_inputs(batch, (256, 256), seed=batch)
        with torch.inference_mode():
            expected = tuple(t.numpy() for t in reference(images, sizes))
        actual = session.run(["labels", "boxes", "scores"],
                             {"images": images.numpy(), "orig_target_sizes": sizes.numpy()})
        assert check_outputs(expected, tuple(actual), TOLERANCES["fp16"]).passed
        # and it is really half precision: the strict FP32 policy notices
        assert check_outputs(expected, tuple(actual), TOLERANCES["fp32"]).max_score_diff > 0


def test_describe_onnx_rejects_old_opset(tiny_model, tmp_path):
    pytest.importorskip("onnx")
    from dfine_cli.export.onnx import export_onnx

    model, info = tiny_model
    path = export_onnx(model, info, tmp_path / "old.onnx", img_size=(256, 256), opset=16,
                       check=False, simplify=False).path
    with pytest.raises(UsageError, match="opset"):
        describe_onnx(path)
