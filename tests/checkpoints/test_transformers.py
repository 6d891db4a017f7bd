"""transformers' D-FINE checkpoints → official state-dict layout (``official_keys_*.tsv``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dfine_cli.checkpoints.infer import HFModelSpec
from dfine_cli.checkpoints.official import INPUT_SIZE_KEYS
from dfine_cli.checkpoints.transformers import (
    hf_config_to_spec,
    load_hf_as_official,
    read_hf_checkpoint,
    spec_from_state_dict_shapes,
)
from dfine_cli.checkpoints.transformers_keys import hf_state_dict_to_official
from dfine_cli.errors import CheckpointError
from tests.models.hf_helpers import make_hf_dfine_config, randomize_
from tests.models.reference_weights import read_manifest

transformers = pytest.importorskip("transformers")

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REFERENCE = SHARED / "reference"
SIZES = ["n", "s", "m", pytest.param("l", marks=pytest.mark.slow), pytest.param("x", marks=pytest.mark.slow)]


def require_manifests() -> Path:
    if not (REFERENCE / "official_keys_n.tsv").is_file():
        pytest.skip("../shared/reference is not available")
    return REFERENCE


def manifest(size: str) -> dict[str, dict[str, str]]:
    return {row["key"]: row for row in read_manifest(require_manifests() / f"official_keys_{size}.tsv")}


def shape_text(tensor: torch.Tensor) -> str:
    return "scalar" if tensor.dim() == 0 else "x".join(str(d) for d in tensor.shape)


class NotWeights:
    """A pickled Python object: what ``weights_only`` loading must refuse."""


def save_hf_model(size: str, folder: Path) -> torch.nn.Module:
    """A transformers model with distinct random values everywhere, saved to ``folder``."""
    model = transformers.DFineForObjectDetection(make_hf_dfine_config(size)).eval()
    randomize_(model)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def saved_n(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("hf_n")
    return folder, save_hf_model("n", folder)


# ------------------------------------------------------------------------ layout per size


@pytest.mark.parametrize("size", SIZES)
def test_saved_checkpoint_converts_to_the_official_layout(size: str, tmp_path: Path) -> None:
    rows = manifest(size)
    save_hf_model(size, tmp_path)

    state, config = read_hf_checkpoint(tmp_path)
    assert config is not None
    spec = hf_config_to_spec(config)
    assert (spec.size, spec.variant, spec.num_classes) == (size, "dfine", 80)
    assert spec.class_names[:2] == ("class_0", "class_1")
    assert spec.notes == ()
    assert spec_from_state_dict_shapes(state).size == size

    official = hf_state_dict_to_official(state, spec)
    missing = set(rows) - set(official)
    assert missing == set(INPUT_SIZE_KEYS) == {"decoder.anchors", "decoder.valid_mask"}
    assert set(official) <= set(rows), sorted(set(official) - set(rows))[:5]
    wrong = [
        (key, shape_text(t), str(t.dtype), rows[key]["shape"], rows[key]["dtype"])
        for key, t in official.items()
        if (shape_text(t), str(t.dtype).removeprefix("torch.")) != (rows[key]["shape"], rows[key]["dtype"])
    ]
    assert not wrong, wrong[:5]


def test_constants_equal_the_official_buffers(saved_n: tuple[Path, torch.nn.Module]) -> None:
    """up, reg_scale (int64), num_points_scale and BatchNorm counters as the official model has them."""
    verbatim = torch.load(require_manifests() / "official_verbatim_n.pt", weights_only=True)
    official, _ = load_hf_as_official(saved_n[0])
    compared = 0
    for key, expected in verbatim.items():
        if key in official:
            assert official[key].dtype == expected.dtype, key
            assert torch.equal(official[key], expected), key
            compared += 1
    assert compared == len(verbatim) - 2  # all but anchors and valid_mask


def test_tensors_land_where_the_official_model_expects_them(saved_n: tuple[Path, torch.nn.Module]) -> None:
    folder, model = saved_n
    hf = model.state_dict()
    official, _ = load_hf_as_official(folder)
    pairs = {
        "backbone.stem.stem1.conv.weight": "model.backbone.model.embedder.stem1.convolution.weight",
        "backbone.stages.3.blocks.0.layers.2.conv2.lab.scale": "model.backbone.model.encoder.stages.3.blocks.0.layers.2.conv2.lab.scale",
        "backbone.stages.1.downsample.bn.running_var": "model.backbone.model.encoder.stages.1.downsample.normalization.running_var",
        "encoder.input_proj.1.conv.weight": "model.encoder_input_proj.1.0.weight",
        "encoder.encoder.0.layers.0.linear2.weight": "model.encoder.aifi.0.layers.0.mlp.layers.1.weight",
        "encoder.encoder.0.layers.0.norm2.bias": "model.encoder.aifi.0.layers.0.final_layer_norm.bias",
        "encoder.fpn_blocks.0.cv2.0.bottlenecks.1.conv1.norm.running_mean": "model.encoder.fpn_blocks.0.csp_rep1.bottlenecks.1.conv1.norm.running_mean",
        "encoder.pan_blocks.0.cv3.1.conv.weight": "model.encoder.pan_blocks.0.conv3.conv.weight",
        "encoder.downsample_convs.0.0.cv2.conv.weight": "model.encoder.downsample_convs.0.conv2.conv.weight",
        "decoder.enc_output.norm.weight": "model.enc_output.1.weight",
        "decoder.dec_score_head.2.bias": "model.decoder.class_embed.2.bias",
        "decoder.dec_bbox_head.1.layers.2.weight": "model.decoder.bbox_embed.1.layers.2.weight",
        "decoder.decoder.layers.2.linear1.weight": "model.decoder.layers.2.mlp.layers.0.weight",
        "decoder.decoder.layers.1.norm3.weight": "model.decoder.layers.1.final_layer_norm.weight",
        "decoder.decoder.layers.0.cross_attn.sampling_offsets.bias": "model.decoder.layers.0.encoder_attn.sampling_offsets.bias",
        "decoder.decoder.lqe_layers.1.reg_conf.layers.0.weight": "model.decoder.lqe_layers.1.reg_conf.layers.0.weight",
        "decoder.denoising_class_embed.weight": "model.denoising_class_embed.weight",
    }
    for official_key, hf_key in pairs.items():
        assert torch.equal(official[official_key], hf[hf_key]), official_key
    for prefix, official_prefix in [
        ("model.encoder.aifi.0.layers.0", "encoder.encoder.0.layers.0"),
        ("model.decoder.layers.1", "decoder.decoder.layers.1"),
    ]:
        for leaf in ("weight", "bias"):
            fused = torch.cat([hf[f"{prefix}.self_attn.{p}_proj.{leaf}"] for p in "qkv"])
            assert torch.equal(official[f"{official_prefix}.self_attn.in_proj_{leaf}"], fused)


def test_in_memory_names_convert_like_the_saved_file(saved_n: tuple[Path, torch.nn.Module]) -> None:
    """``model.state_dict()`` uses newer names (o_proj, mlp.layers, aifi) and tied head copies."""
    folder, model = saved_n
    from_file, spec = load_hf_as_official(folder)
    from_memory = hf_state_dict_to_official(model.state_dict(), spec)
    assert from_memory.keys() == from_file.keys()
    assert all(torch.equal(from_memory[k], from_file[k]) for k in from_file)


def test_half_precision_weights_become_float32(saved_n: tuple[Path, torch.nn.Module]) -> None:
    folder, model = saved_n
    spec = load_hf_as_official(folder)[1]
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    official = hf_state_dict_to_official(half, spec)
    assert {t.dtype for t in official.values()} == {torch.float32, torch.int64}


# ----------------------------------------------------------------------------- config.json


@pytest.mark.parametrize("size", ["n", "s", "m", "l", "x"])
def test_config_json_identifies_every_size(size: str) -> None:
    config = json.loads(make_hf_dfine_config(size, num_classes=3).to_json_string())
    spec = hf_config_to_spec(config)
    assert spec == HFModelSpec(size=size, variant="dfine", num_classes=3, class_names=("class_0", "class_1", "class_2"))


def test_silu_decoder_is_the_deim_variant() -> None:
    spec = hf_config_to_spec(make_hf_dfine_config("m", variant="deim").to_dict())
    assert (spec.size, spec.variant) == ("m", "deim")
    assert spec.model_config().decoder_activation == "silu"
    assert any("MLP heads" in note for note in spec.notes)


def test_hub_style_x_config_with_default_reg_scale_is_accepted() -> None:
    """transformers' conversion script leaves reg_scale=4 in X's config; the weights hold 8."""
    config = make_hf_dfine_config("x").to_dict()
    config["reg_scale"] = 4.0
    spec = hf_config_to_spec(config)
    assert spec.size == "x"
    assert any("reg_scale" in note for note in spec.notes)


def test_eval_size_and_no_denoising_are_reported() -> None:
    config = make_hf_dfine_config("n").to_dict()
    config["eval_size"] = 640
    config["num_denoising"] = 0
    spec = hf_config_to_spec(config)
    assert any("positional embedding" in note for note in spec.notes)
    assert spec.model_config().num_denoising == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decoder_layers": 5}, "decoder_layers is 5"),
        ({"decoder_n_points": 4}, "decoder_n_points is (4, 4, 4)"),
        ({"encoder_hidden_dim": 192}, "encoder_hidden_dim is 192"),
        ({"decoder_method": "discrete"}, "decoder_method"),
        ({"decoder_activation_function": "gelu"}, "neither 'relu'"),
        ({"model_type": "rt_detr"}, "not D-FINE"),
        ({"id2label": {"0": "a", "2": "b"}}, "id2label ids"),
    ],
)
def test_config_outside_the_presets_is_rejected(change: dict[str, object], message: str) -> None:
    config = make_hf_dfine_config("s").to_dict()
    config.update(change)
    with pytest.raises(CheckpointError, match=r"^[^\n]*$") as info:
        hf_config_to_spec(config)
    assert message in str(info.value)


def test_unknown_backbone_is_rejected() -> None:
    config = make_hf_dfine_config("s").to_dict()
    config["backbone_config"]["stage_num_blocks"] = [1, 1, 4, 1]
    with pytest.raises(CheckpointError, match="custom"):
        hf_config_to_spec(config)


def test_malformed_config_is_a_checkpoint_error() -> None:
    config = make_hf_dfine_config("s").to_dict()
    config["backbone_config"]["stage_mid_channels"] = [16]
    with pytest.raises(CheckpointError, match="malformed"):
        hf_config_to_spec(config)


# --------------------------------------------------------------------------- state errors


def n_state(saved_n: tuple[Path, torch.nn.Module]) -> tuple[dict[str, torch.Tensor], HFModelSpec]:
    state, config = read_hf_checkpoint(saved_n[0])
    assert config is not None
    return state, hf_config_to_spec(config)


def test_unknown_keys_are_listed(saved_n: tuple[Path, torch.nn.Module]) -> None:
    state, spec = n_state(saved_n)
    state["model.decoder.layers.0.mystery.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 transformers key.*mystery"):
        hf_state_dict_to_official(state, spec)


def test_incomplete_attention_is_rejected(saved_n: tuple[Path, torch.nn.Module]) -> None:
    state, spec = n_state(saved_n)
    del state["model.decoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(CheckpointError, match=r"layers\.1\.self_attn lacks k_proj\.bias"):
        hf_state_dict_to_official(state, spec)


def test_weights_contradicting_the_spec_are_rejected(saved_n: tuple[Path, torch.nn.Module]) -> None:
    state, spec = n_state(saved_n)
    with pytest.raises(CheckpointError, match="80 classes but the configuration lists 91"):
        hf_state_dict_to_official(state, HFModelSpec(size="n", variant="dfine", num_classes=91))
    state["model.decoder.reg_scale"] = torch.tensor([5.0])
    with pytest.raises(CheckpointError, match="reg_scale"):
        hf_state_dict_to_official(state, spec)


def test_shapes_of_no_preset_are_rejected(saved_n: tuple[Path, torch.nn.Module]) -> None:
    state, _ = n_state(saved_n)
    state = {k: v for k, v in state.items() if not k.startswith("model.decoder.layers.2.")}
    with pytest.raises(CheckpointError, match="decoder_layers is 2"):
        spec_from_state_dict_shapes(state)


# -------------------------------------------------------------------------------- reading


def test_weights_file_alone_is_identified_from_shapes(saved_n: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    lone = tmp_path / "model.safetensors"
    lone.write_bytes((saved_n[0] / "model.safetensors").read_bytes())
    official, spec = load_hf_as_official(lone)
    assert (spec.size, spec.variant, spec.num_classes, spec.class_names) == ("n", "dfine", 80, ())
    assert "decoder.dec_score_head.0.weight" in official

    beside = load_hf_as_official(saved_n[0] / "model.safetensors")[1]
    assert beside.class_names[0] == "class_0"  # config.json next to the file is used


def test_pytorch_model_bin_is_read_weights_only(saved_n: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    state, config = read_hf_checkpoint(saved_n[0])
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(config))
    official, spec = load_hf_as_official(tmp_path)
    assert spec.size == "n" and len(official) > 600

    torch.save({"x": NotWeights()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safely"):
        read_hf_checkpoint(tmp_path)


def test_unreadable_checkpoints_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_hf_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="holds none of"):
        read_hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        read_hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        read_hf_checkpoint(tmp_path)


def test_counters_of_an_unfrozen_hf_backbone_are_kept() -> None:
    config = make_hf_dfine_config("n")
    config.freeze_backbone_batch_norms = False
    model = transformers.DFineForObjectDetection(config)
    counter = "model.backbone.model.embedder.stem1.normalization.num_batches_tracked"
    model.state_dict()[counter].fill_(7)
    official = hf_state_dict_to_official(model.state_dict(), hf_config_to_spec(config.to_dict()))
    assert int(official["backbone.stem.stem1.bn.num_batches_tracked"]) == 7


def test_sharded_safetensors_are_read(saved_n: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    saved_n[1].save_pretrained(tmp_path, max_shard_size="4MB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    sharded, _ = read_hf_checkpoint(tmp_path)
    whole, _ = read_hf_checkpoint(saved_n[0])
    assert sharded.keys() == whole.keys()
    assert all(torch.equal(sharded[k], whole[k]) for k in whole)
