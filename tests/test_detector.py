"""The Python API: construction, prediction on paths and arrays, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfine_cli.detector import Detector, preprocess
from dfine_cli.errors import DataError, HardwareError, UsageError
from tests.conftest import write_jpeg
from tests.helpers import tiny_checkpoint


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")
    return Detector.from_checkpoint(path)


def test_predict_paths_and_arrays(detector, tmp_path, rgb_image):
    img = write_jpeg(tmp_path / "a.jpg", h=90, w=130)
    results = detector.predict([img, rgb_image], conf=0.0, batch_size=2)
    assert len(results) == 2
    first, second = results
    assert (first.width, first.height) == (130, 90)
    assert (second.width, second.height) == (160, 120)
    assert first.path == str(img) and second.path is None
    for r in results:
        assert len(r) == 300
        assert (r.boxes[:, [0, 2]] >= 0).all() and (r.boxes[:, [0, 2]] <= r.width).all()
        assert (r.boxes[:, [1, 3]] >= 0).all() and (r.boxes[:, [1, 3]] <= r.height).all()
        assert np.all(np.diff(r.scores) <= 0)
        assert set(r.names) <= {"thing0", "thing1", "thing2"}
        assert set(r.category_ids) <= {3, 7, 42}


def test_conf_and_max_det_filter(detector, rgb_image):
    full = detector.predict(rgb_image, conf=0.0)[0]
    thresh = float(full.scores[10])
    kept = detector.predict(rgb_image, conf=thresh)[0]
    assert len(kept) == int((full.scores >= thresh).sum())
    assert len(detector.predict(rgb_image, conf=0.0, max_det=5)[0]) == 5


def test_bgr_channels_flag(detector, rgb_image):
    rgb = detector.predict(rgb_image, conf=0.0)[0]
    bgr = detector.predict(np.ascontiguousarray(rgb_image[..., ::-1]), conf=0.0, channels="bgr")[0]
    np.testing.assert_allclose(rgb.scores, bgr.scores, atol=1e-6)


def test_to_dict_record(detector, rgb_image):
    record = detector.predict(rgb_image, conf=0.0, max_det=2)[0].to_dict()
    assert set(record) == {"path", "width", "height", "detections"}
    assert set(record["detections"][0]) == {"label", "category_id", "name", "score", "box"}


def test_batch_equals_single(detector, rgb_image):
    other = np.ascontiguousarray(rgb_image[::-1])
    batched = detector.predict([rgb_image, other], conf=0.0, batch_size=2)
    single = [detector.predict(im, conf=0.0)[0] for im in (rgb_image, other)]
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_bad_inputs(detector, tmp_path):
    corrupt = tmp_path / "bad.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="cannot decode"):
        detector.predict(corrupt)
    with pytest.raises(DataError, match="not found"):
        detector.predict(tmp_path / "missing.jpg")
    with pytest.raises(UsageError):
        detector.predict(np.zeros((10, 10), dtype=np.uint8))


def test_preprocess_shapes_and_range(rgb_image):
    batch = preprocess([rgb_image], (64, 96))
    assert batch.shape == (1, 3, 64, 96) and batch.dtype == np.float32
    assert batch.min() >= 0.0 and batch.max() <= 1.0


def test_from_preset_rejects_bad_values():
    with pytest.raises(UsageError):
        Detector.from_preset("q")
    with pytest.raises(UsageError):
        Detector.from_preset("n", num_classes=2, img_size=100)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_hardware_error():
    with pytest.raises(HardwareError, match="no CUDA GPU"):
        Detector.from_preset("n", num_classes=2, device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(rgb_image):
    cpu = Detector.from_preset("n", num_classes=3, img_size=320, seed=1)
    gpu = Detector.from_preset("n", num_classes=3, img_size=320, seed=1, device="cuda")
    a = cpu.predict(rgb_image, conf=0.0)[0]
    b = gpu.predict(rgb_image, conf=0.0)[0]
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_any_input_size_multiple_of_32(rgb_image):
    det = Detector.from_preset("n", num_classes=2, img_size=(256, 384))
    out = det.predict(rgb_image, conf=0.0)[0]
    assert len(out) == 300


def test_deploy_module_is_the_fast_form_by_default():
    """Fused (BatchNorms folded into convolutions) and channels-last on the CPU; fuse=False gives the training form."""
    from dfine_cli.export.compare import compare_detections

    det = Detector.from_preset("n", num_classes=3, img_size=320, seed=1)
    fast = det.deploy_module()
    assert fast.model is not det.model and fast.channels_last
    def norms(module):
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())

    assert all(getattr(m, "fused", True) is not None for m in fast.modules())
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = det.deploy_module(fuse=False)
    assert plain.model is det.model and not plain.channels_last
    assert any(getattr(m, "fused", True) is None for m in plain.modules())
    assert norms(fast) < norms(plain) / 10
    assert not det.deploy_module(channels_last=False).channels_last
    images = torch.rand(2, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[320, 240], [640, 480]])
    with torch.inference_mode():
        a = tuple(t.numpy() for t in fast(images, sizes))
        b = tuple(t.numpy() for t in plain(images, sizes))
    agreement = compare_detections(b, a, score_tol=1e-4, box_tol=0.05)
    assert agreement.ok(1e-4, 0.05), agreement.describe()


def test_pil_images_paths_tensors_and_read_only_arrays_give_the_same_detections(detector, tmp_path, rgb_image):
    import warnings
    from pathlib import Path

    from PIL import Image

    reference = detector.predict(rgb_image, conf=0.0)[0]
    read_only = rgb_image.copy()
    read_only.setflags(write=False)
    pil = Image.fromarray(rgb_image)
    chw = torch.from_numpy(rgb_image).permute(2, 0, 1)
    png = tmp_path / "a.png"
    pil.save(png)  # lossless: the same pixels from a file
    inputs = {
        "PIL RGB": pil, "PIL RGBA": pil.convert("RGBA"), "read-only array": read_only,
        "uint8 tensor": chw, "float tensor": chw.float() / 255, "Path": Path(png), "str": str(png),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "The given NumPy array is not writable"
        for name, image in inputs.items():
            result = detector.predict(image, conf=0.0)[0]
            assert (result.width, result.height) == (160, 120), name
            np.testing.assert_allclose(result.scores, reference.scores, atol=1e-5, err_msg=name)
        batch = detector.predict(torch.stack([chw, chw]), conf=0.0, batch_size=2)
        opened = detector.predict(Image.open(png), conf=0.0)[0]
    assert len(batch) == 2
    np.testing.assert_allclose(batch[1].scores, reference.scores, atol=1e-5)
    assert opened.path == str(png)


def test_unusable_image_objects_are_usage_errors(detector):
    with pytest.raises(UsageError, match=r"image tensors must be \[3, H, W\]"):
        detector.predict(torch.zeros(1, 8, 8))
    with pytest.raises(UsageError, match="uint8 or floating point"):
        detector.predict(torch.zeros(3, 8, 8, dtype=torch.int32))
    with pytest.raises(UsageError, match="cannot predict on a int"):
        detector.predict([5])
