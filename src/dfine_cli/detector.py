"""The high-level Python API: load a model from anything, predict on images.

>>> from dfine_cli import Detector
>>> det = Detector.from_preset("n", num_classes=3)          # random weights
>>> det = Detector.from_checkpoint("dfine_l_obj2coco.pth")   # any supported format
>>> results = det.predict(["a.jpg", rgb_array], conf=0.4)
>>> module = det.deploy_module()  # images [N,3,H,W] 0..1, sizes [N,2] (w,h) -> labels, boxes, scores
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from dfine_cli.backends import backend_for_file
from dfine_cli.backends.base import Backend, BackendMeta
from dfine_cli.backends.torch_backend import TorchBackend
from dfine_cli.checkpoint import ModelInfo, load_weights, read_checkpoint, save_checkpoint
from dfine_cli.device import resolve_device
from dfine_cli.errors import UsageError
from dfine_cli.media import read_image_rgb
from dfine_cli.models.build import build_model_from_config
from dfine_cli.models.dfine import DFINE, DeployModel
from dfine_cli.models.presets import preset

log = logging.getLogger("dfine.detector")

ImageInput = str | Path | np.ndarray


@dataclass
class Detections:
    """Detections of one image; boxes are xyxy in the image's own pixels, clipped to it."""

    boxes: np.ndarray  # [K, 4] float32
    scores: np.ndarray  # [K] float32, descending
    labels: np.ndarray  # [K] int64, 0-based class index
    names: list[str]  # [K] class names
    width: int
    height: int
    path: str | None = None
    category_ids: list[int] = field(default_factory=list)  # [K] dataset category ids

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "detections": [
                {
                    "label": int(self.labels[i]),
                    "category_id": int(self.category_ids[i]) if self.category_ids else int(self.labels[i]),
                    "name": self.names[i],
                    "score": round(float(self.scores[i]), 6),
                    "box": [round(float(v), 2) for v in self.boxes[i]],
                }
                for i in range(len(self))
            ],
        }


def preprocess(images: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 ``HxWx3`` arrays → float32 ``[N, 3, H, W]`` in 0..1 at ``size`` (h, w).

    Bilinear resize with antialiasing, no mean/std normalisation (the D-FINE input format).
    """
    batch = []
    for image in images:
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if tuple(t.shape[1:]) != tuple(size):
            t = TF.resize(t, list(size), antialias=True)
        batch.append(t)
    return (torch.stack(batch).float() / 255.0).numpy()


def _load_backend(path: Path, backend: str, device: str | None, threads: int | None) -> Backend:
    if backend == "onnxruntime":
        from dfine_cli.backends.onnxruntime_backend import OnnxRuntimeBackend

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device and device.startswith("cuda") else None
        return OnnxRuntimeBackend(path, threads=threads, providers=providers)
    if backend == "openvino":
        from dfine_cli.backends.openvino_backend import OpenVINOBackend

        # fp32 here: predict/eval give the model's own numbers; bf16 is a bench choice.
        return OpenVINOBackend(path, threads=threads, precision="fp32", device=device)
    if backend == "tensorrt":
        from dfine_cli.backends.tensorrt_backend import TensorRTBackend

        if path.suffix.lower() == ".onnx":
            raise UsageError(
                f"--backend tensorrt runs a built engine; build one from {path.name} with "
                "'dfine export ... --format engine'"
            )
        return TensorRTBackend(path, device=device)
    raise UsageError(f"unsupported backend {backend!r}")


class Detector:
    """A model ready for inference through one backend (torch, ONNX Runtime, ...)."""

    def __init__(
        self,
        backend: Backend,
        *,
        model: DFINE | None = None,
        info: ModelInfo | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self.info = info
        self.device = device or torch.device("cpu")

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_model(
        cls, model: DFINE, info: ModelInfo, device: str | torch.device | None = "cpu",
        fuse: bool = True,
    ) -> Detector:
        dev = resolve_device(device)
        model = model.to(dev).eval()
        deploy = DeployModel(_fused_copy(model) if fuse else model).to(dev)
        if fuse and dev.type == "cpu":
            deploy.use_channels_last()
        meta = BackendMeta(
            img_size=info.img_size, class_names=list(info.class_names),
            category_ids=list(info.category_ids), description=f"torch {torch.__version__} ({dev})",
        )
        return cls(TorchBackend(deploy, meta, dev), model=model, info=info, device=dev)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device | None = "cpu", variant: str | None = None
    ) -> Detector:
        """Load official D-FINE/DEIM ``.pth``, transformers folders/safetensors, or ours.

        ``path`` may also be a weights name (``dfine-s-coco``) or ``hf:org/repo``; an existing
        local path always wins.
        """
        ckpt = read_checkpoint(path, variant=variant)
        model = build_model_from_config(ckpt.info.config)
        load_weights(model, ckpt.state_dict, source=str(path))
        return cls.from_model(model, ckpt.info, device)

    @classmethod
    def from_pretrained(
        cls, name: str, device: str | torch.device | None = "cpu", variant: str | None = None
    ) -> Detector:
        """Official weights by name (``dfine-s-coco``, ``dfine-l-obj365``, ``hf:org/repo``...).

        Downloads once into ``$DFINE_HOME`` (see ``dfine weights list``); class names come
        with the name.
        """
        from dfine_cli.hub import WEIGHTS, is_weights_name, lookup

        entry = lookup(name)
        if not is_weights_name(name) or (entry is not None and entry.kind != "detector"):
            names = ", ".join(n for n, e in WEIGHTS.items() if e.kind == "detector")
            raise UsageError(f"unknown pretrained detector {name!r}; choose one of {names}, or hf:org/name")
        return cls.from_checkpoint(name, device=device, variant=variant)

    @classmethod
    def from_preset(
        cls,
        size: str,
        num_classes: int = 80,
        *,
        variant: str = "dfine",
        class_names: Sequence[str] | None = None,
        img_size: int | tuple[int, int] = 640,
        device: str | torch.device | None = "cpu",
        seed: int | None = 0,
    ) -> Detector:
        """A randomly initialised model of an official size (for tests and demos)."""
        try:
            cfg = preset(size, num_classes=num_classes, variant=variant)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        if seed is not None:
            torch.manual_seed(seed)
        model = build_model_from_config(cfg)
        names, ids = ModelInfo.default_names(num_classes)
        if class_names is not None:
            if len(class_names) != num_classes:
                raise UsageError(f"{len(class_names)} class names for {num_classes} classes")
            names = list(class_names)
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        info = ModelInfo(cfg, names, ids, img_size=check_img_size(hw))
        return cls.from_model(model, info, device)

    @classmethod
    def load(
        cls,
        weights: str | Path,
        *,
        backend: str | None = None,
        device: str | None = "cpu",
        variant: str | None = None,
        threads: int | None = None,
    ) -> Detector:
        """Any weights file with the right backend (``None``/``auto``: by file extension)."""
        path = Path(weights)
        chosen = backend_for_file(path, backend)
        if chosen == "torch":
            return cls.from_checkpoint(path, device=device, variant=variant)
        return cls(_load_backend(path, chosen, device, threads))

    # -- properties ------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.backend.meta.class_names

    @property
    def img_size(self) -> tuple[int, int]:
        return self.backend.meta.img_size

    def deploy_module(self, fuse: bool = True, channels_last: bool | None = None) -> DeployModel:
        """The model + postprocessor as one ``nn.Module`` with the official contract.

        By default the fast inference form, the one ``predict`` runs: a copy with every
        BatchNorm folded and the RepVGG blocks re-parameterised, and on the CPU NHWC
        (channels-last) weights, which oneDNN convolutions run faster; inputs may stay
        NCHW. ``fuse=False`` gives the training-form module (this detector's own model, not
        a copy); ``channels_last`` forces the memory format either way (``None``: only for
        a fused module on the CPU).
        """
        if self.model is None:
            raise UsageError("deploy_module() needs a torch model (not an exported file)")
        if not fuse:
            module = DeployModel(self.model).eval()
            return module.use_channels_last() if channels_last else module
        module = DeployModel(_fused_copy(self.model)).eval()
        if channels_last or (channels_last is None and self.device.type == "cpu"):
            module.use_channels_last()
        return module

    def save(self, path: str | Path) -> Path:
        """Write our checkpoint format (weights, config, class names, input size)."""
        if self.model is None or self.info is None:
            raise UsageError("save() needs a torch model")
        return save_checkpoint(path, self.model, self.info)

    # -- inference -------------------------------------------------------------------------
    def infer_batch(
        self, images: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw top-K outputs for RGB uint8 arrays (boxes in each image's pixels)."""
        sizes = np.array([[im.shape[1], im.shape[0]] for im in images], dtype=np.int64)
        batch = preprocess(images, self.img_size)
        if not self.backend.meta.dynamic_batch and len(images) != 1:
            outs = [self.backend(batch[i : i + 1], sizes[i : i + 1]) for i in range(len(images))]
            return tuple(np.concatenate(parts) for parts in zip(*outs))  # type: ignore[return-value]
        return self.backend(batch, sizes)

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        conf: float = 0.5,
        batch_size: int = 1,
        channels: str = "rgb",
        max_det: int | None = None,
    ) -> list[Detections]:
        """Detect objects; ``images`` are paths or ``HxWx3`` uint8 arrays.

        Keeps detections with score ``>= conf`` (at most ``max_det``, best first). Arrays
        are taken as RGB by default; pass ``channels="bgr"`` for OpenCV frames.
        """
        if isinstance(images, (str, Path, np.ndarray)):
            images = [images]
        items = list(images)
        if channels not in ("rgb", "bgr"):
            raise UsageError("channels must be 'rgb' or 'bgr'")
        results: list[Detections] = []
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start : start + max(1, batch_size)]
            arrays: list[np.ndarray] = []
            paths: list[str | None] = []
            for item in chunk:
                if isinstance(item, np.ndarray):
                    arr = _check_array(item)
                    arrays.append(arr[..., ::-1] if channels == "bgr" else arr)
                    paths.append(None)
                else:
                    arrays.append(read_image_rgb(item))
                    paths.append(str(item))
            labels, boxes, scores = self.infer_batch(arrays)
            for i, arr in enumerate(arrays):
                results.append(
                    self._to_detections(labels[i], boxes[i], scores[i], arr, paths[i], conf, max_det)
                )
        return results

    def _to_detections(
        self, labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, image: np.ndarray,
        path: str | None, conf: float, max_det: int | None = None,
    ) -> Detections:
        h, w = image.shape[:2]
        keep = scores >= conf
        if max_det is not None:
            keep &= np.arange(len(scores)) < max_det  # scores are sorted descending
        boxes = boxes[keep].astype(np.float32).copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        labels = labels[keep].astype(np.int64)
        names = self.class_names
        ids = self.backend.meta.category_ids
        return Detections(
            boxes=boxes,
            scores=scores[keep].astype(np.float32),
            labels=labels,
            names=[names[int(k)] if int(k) < len(names) else str(int(k)) for k in labels],
            width=w,
            height=h,
            path=path,
            category_ids=[ids[int(k)] if int(k) < len(ids) else int(k) for k in labels],
        )


def check_img_size(size: tuple[int, ...]) -> tuple[int, int]:
    if len(size) != 2 or any(s <= 0 or s % 32 for s in size):
        raise UsageError(f"image size must be a positive multiple of 32, got {size}")
    return int(size[0]), int(size[1])


def _check_array(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UsageError(
            f"image arrays must be HxWx3 uint8, got shape {image.shape} dtype {image.dtype}"
        )
    return image


def _fused_copy(model: DFINE) -> DFINE:
    import copy

    return copy.deepcopy(model).eval().fuse()
