"""Training settings: every value is checked (type, range, choices, NaN) before anything runs."""

from __future__ import annotations

import dataclasses

import pytest

from dfine_cli.engine.config import TrainConfig, merge, parse_set, validate
from dfine_cli.errors import UsageError


def _set(*items: str) -> TrainConfig:
    return merge(TrainConfig(data="d"), parse_set(list(items)), "--set")


def test_defaults_are_valid():
    assert validate(TrainConfig(data="d")) == TrainConfig(data="d")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("workers=-1", "invalid setting workers=-1: must be an integer >= 0"),
        ("ema_decay=2", "invalid setting ema_decay=2.0: must be a number in [0, 1)"),
        ("ema_decay=1", "must be a number in [0, 1)"),
        ("num_denoising=-5", "invalid setting num_denoising=-5: must be an integer >= 0"),
        ("lr_scale=nan", "invalid setting lr_scale=nan: must be a finite number > 0"),
        ("lr_scale=.inf", "invalid setting lr_scale=inf: must be a finite number > 0"),
        ("lr_scale=0", "must be a finite number > 0"),
        ("clip_max_norm=-1", "clip_max_norm=-1.0: must be a finite number >= 0"),
        ("eval_backend=bogus", "invalid setting eval_backend='bogus': must be one of faster, pycocotools"),
        ("metric=bogus", "invalid setting metric='bogus': must be one of AP, AP50, AP75"),
        ("amp_dtype=fp8", "must be one of auto, bf16, fp16"),
        ("check_images=full", "must be one of decode, header"),
        ("device=gpu", "must be auto, cpu, mps, cuda or cuda:N"),
        ("seed=-1", "seed=-1: must be an integer in [0, 2^32)"),
        ("img_size=100", "img_size=100: must be a positive multiple of 32 (32, 64, 96, ..., 640, ...)"),
        ("epochs=0", "epochs=0: must be an integer >= 1"),
        ("batch_size=0", "batch_size=0: must be an integer >= 1"),
        ("eval_every=0", "eval_every=0: must be an integer >= 1"),
        ("patience=0", "patience=0: must be an integer >= 1"),
        ("save_every_steps=0", "save_every_steps=0: must be an integer >= 1"),
        ("warmup_iters=-1", "warmup_iters=-1: must be an integer >= 0"),
        ("max_nonfinite=0", "max_nonfinite=0: must be an integer >= 1"),
        ("ema_warmups=-2", "ema_warmups=-2: must be an integer >= 0"),
        ("model=q", "model='q': must be one of n, s, m, l, x"),
        ("recipe=yolo", "recipe='yolo': must be one of"),
        ("tune_variant=yolo", "tune_variant='yolo': must be one of"),
        ("name=a/b", "name='a/b': must be a folder name"),
        ("name=..", "must be a folder name"),
        ("train_split=' '", "train_split=' ': must be a split name"),
        ("augment={nope: 1}", "invalid setting augment={'nope': 1}: unknown augmentation settings"),
        ("augment={flip_p: x}", "invalid setting augment="),
    ],
)
def test_out_of_range_settings_name_what_is_allowed(item: str, message: str):
    with pytest.raises(UsageError) as info:
        validate(_set(item))
    assert message in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", "3", "invalid setting epochs='3': must be an integer or null"),
        ("lr_scale", "1", "lr_scale='1': must be a number"),
        ("amp", 1, "amp=1: must be true or false"),
        ("workers", True, "workers=True: must be an integer"),
        ("augment", [1], "augment=[1]: must be a mapping"),
    ],
)
def test_wrong_types_from_python_are_refused(field: str, value: object, message: str):
    cfg = dataclasses.replace(TrainConfig(data="d"), **{field: value})
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(cfg)


def test_data_is_required_unless_resuming():
    with pytest.raises(UsageError, match="--data is required"):
        validate(TrainConfig())
    assert validate(TrainConfig(resume="auto")).resume == "auto"
    with pytest.raises(UsageError, match="workers=-1"):  # a resume's overrides are checked too
        validate(TrainConfig(resume="auto", workers=-1))


def test_good_values_at_the_edges_pass():
    cfg = _set("workers=0", "ema_decay=0", "num_denoising=0", "clip_max_norm=0", "device=cuda:1",
               "metric=AP50", "eval_backend=pycocotools", "check_images=header", "seed=4294967295",
               "name=my-run", "exist_ok=true")
    assert validate(cfg) is cfg


def test_img_size_must_leave_room_for_every_query():
    from dfine_cli.engine.config import min_img_size
    from dfine_cli.models.presets import preset

    for size, recipe in (("n", "dfine"), ("s", "dfine"), ("s", "deim")):
        config = preset(size, variant=recipe)
        smallest = min_img_size(size, recipe, multiscale=size != "n")
        low = int(smallest * 0.75 / 32) * 32 if size != "n" else smallest
        assert sum((low // s) ** 2 for s in config.feat_strides) >= config.num_queries
        with pytest.raises(UsageError, match=f"img_size={smallest - 32}: D-FINE-{size.upper()} needs at least {smallest}"):
            validate(TrainConfig(data="d", model=size, recipe=recipe, img_size=smallest - 32))


def test_config_and_dataset_yaml_with_python_tags_are_refused_as_unsafe(tmp_path):
    """The same unsafe file gets the same message everywhere a YAML file is read."""
    from dfine_cli.data.cocofile import resolve_dataset
    from dfine_cli.engine.config import load_config_file
    from dfine_cli.errors import DataError

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UsageError, match="unsafe YAML"):
        load_config_file(evil)
    with pytest.raises(DataError, match="unsafe YAML"):
        resolve_dataset(str(evil), "train")
    assert not marker.exists()
