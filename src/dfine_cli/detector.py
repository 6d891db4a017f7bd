"""The high-level Python API: load a model from anything, predict on images.

>>> from dfine_cli import Detector
>>> det = Detector.from_preset("n", num_classes=3)          # random weights
>>> det = Detector.from_checkpoint("dfine_l_obj2coco.pth")   # any supported format
>>> results = det.predict(["a.jpg", rgb_array], conf=0.4)
>>> module = det.deploy_module()  # images [N,3,H,W] 0..1, sizes [N,2] (w,h) -> labels, boxes, scores
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from dfine_cli.backends import check_precision, choose_backend
from dfine_cli.backends.base import Backend, BackendMeta
from dfine_cli.backends.torch_backend import TorchBackend
from dfine_cli.checkpoints import ModelInfo, load_model, save_checkpoint
from dfine_cli.detection_filter import (
    ClassesInput,
    ConfInput,
    DetectionFilter,
    FilterSpec,
    detection_filter,
)
from dfine_cli.detector_options import DEFAULT_CONF
from dfine_cli.devices import resolve_backend_device, resolve_device, slow_bf16_note
from dfine_cli.errors import UsageError
from dfine_cli.image_size import DEFAULT_IMG_SIZE, check_img_size
from dfine_cli.media import read_image_rgb
from dfine_cli.models.build import build_model_from_config
from dfine_cli.models.dfine import DFINE, DeployModel
from dfine_cli.models.presets import preset

if TYPE_CHECKING:
    import PIL.Image

log = logging.getLogger("dfine.detector")

ImageInput = Union[str, os.PathLike[str], np.ndarray, torch.Tensor, "PIL.Image.Image"]
"""One image for :meth:`Detector.predict`: a path, an ``HxWx3`` uint8 array, a PIL image or
a ``[3, H, W]`` tensor (uint8 0..255, or floating point 0..1)."""


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
    track_ids: np.ndarray | None = None
    """``[K]`` int64 track ids of a tracked video (-1: not in a confirmed track yet);
    ``None`` when not tracked. See :mod:`dfine_cli.tracking`."""

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, keep: np.ndarray) -> Detections:
        """The detections where the boolean mask ``keep`` ``[K]`` is true (order kept)."""
        index = np.flatnonzero(keep)
        return Detections(
            boxes=self.boxes[index], scores=self.scores[index], labels=self.labels[index],
            names=[self.names[i] for i in index], width=self.width, height=self.height,
            path=self.path,
            category_ids=[self.category_ids[i] for i in index] if self.category_ids else [],
            track_ids=self.track_ids[index] if self.track_ids is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record; with track ids, each detection has ``track_id`` (null if none)."""
        records = [
            {
                "label": int(self.labels[i]),
                "category_id": int(self.category_ids[i]) if self.category_ids else int(self.labels[i]),
                "name": self.names[i],
                "score": round(float(self.scores[i]), 6),
                "box": [round(float(v), 2) for v in self.boxes[i]],
            }
            for i in range(len(self))
        ]
        if self.track_ids is not None:
            for record, track_id in zip(records, self.track_ids):
                record["track_id"] = int(track_id) if track_id >= 0 else None
        return {"path": self.path, "width": self.width, "height": self.height, "detections": records}


def preprocess(images: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 ``HxWx3`` arrays → float32 ``[N, 3, H, W]`` in 0..1 at ``size`` (h, w).

    Bilinear resize with antialiasing, no mean/std normalisation (the D-FINE input format).
    """
    batch = []
    for image in images:
        if not (image.flags.c_contiguous and image.flags.writeable):
            image = np.array(image, order="C")  # torch warns about (and may not share) read-only memory
        batch.append(network_input(torch.from_numpy(image).permute(2, 0, 1), size))
    return torch.stack(batch).numpy()


def network_input(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RGB uint8 ``[3, H, W]`` → float32 ``[3, h, w]`` in 0..1 at ``size`` ``(h, w)`` pixels.

    Bilinear resize with antialiasing, then a scale by 1/255; no mean/std normalisation (the
    D-FINE input format). The one conversion prediction and evaluation use, equal to the
    trainer's validation transform (``EvalTransforms``).
    """
    if tuple(image.shape[1:]) != tuple(size):
        image = TF.resize(image, list(size), antialias=True)
    return TF.to_dtype(image, torch.float32, scale=True)


def _load_backend(path: Path, backend: str, device: str | torch.device | None, threads: int | None,
                  precision: str = "fp32") -> Backend:
    if backend == "onnxruntime":
        from dfine_cli.backends.onnxruntime_backend import OnnxRuntimeBackend

        on_cuda = resolve_backend_device("onnxruntime", device).type == "cuda"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if on_cuda else None
        return OnnxRuntimeBackend(path, threads=threads, providers=providers)
    if backend == "openvino":
        from dfine_cli.backends.openvino_backend import OpenVINOBackend

        # fp32 unless asked (--bf16/--fp16): by default the model's own numbers
        return OpenVINOBackend(path, threads=threads, precision=precision, device=device)
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
        model, info = load_model(path, variant=variant)
        return cls.from_model(model, info, device)

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
        img_size: int | tuple[int, int] = DEFAULT_IMG_SIZE,
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
        info = ModelInfo(cfg, names, ids, img_size=check_img_size(img_size))
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
        precision: str = "fp32",
    ) -> Detector:
        """Any weights file with the right backend (``None``/``auto``: by file extension).

        ``precision`` (``fp32``, ``bf16``, ``fp16``): torch runs the model under autocast at
        that precision (fp16 on CUDA only); OpenVINO gets it as its inference-precision hint
        (an INT8 IR then runs its float parts at it); ONNX Runtime and TensorRT engines run
        their file's own precision, so asking them for another one is a usage error.
        """
        path = Path(weights)
        chosen = choose_backend(path, backend, precision, device)
        if chosen == "torch":
            detector = cls.from_checkpoint(path, device=device, variant=variant)
            detector.set_precision(precision)
            return detector
        return cls(_load_backend(path, chosen, device, threads, precision))

    def set_precision(self, precision: str) -> None:
        """Run a PyTorch model under autocast at ``precision`` (``fp32``: plain float32).

        Raises:
            UsageError: the model runs on an exported backend, whose precision is chosen when
                it is loaded (:meth:`load`), or ``precision`` cannot run on this device.
        """
        if not isinstance(self.backend, TorchBackend):
            raise UsageError(f"the precision of {type(self.backend).__name__} is set when it is "
                             "loaded (Detector.load(..., precision=...))")
        check_precision("torch", precision, str(self.device))
        self.backend.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16,
                              "fp16": torch.float16}[precision]
        if precision == "bf16" and (note := slow_bf16_note(self.device.type)):
            log.warning("%s", note)

    def compile_model(self) -> None:
        """Run the torch backend's module through ``torch.compile`` (``--compile``).

        Compilation happens at the first prediction (30-60 s for N on a 2-core CPU); outputs
        equal eager ones within float tolerance. On the CPU the weights are frozen into the
        compiled graph, so a model changed afterwards needs another ``compile_model()``; see
        :func:`dfine_cli.torch_compile.compile_for_inference` and what it needs.

        Raises:
            UsageError: the model runs on an exported backend (ONNX Runtime, OpenVINO, TensorRT).
            DependencyError: ``torch.compile`` cannot run on this device (exit 6).
        """
        from dfine_cli.torch_compile import CompiledInference, compile_for_inference

        if not isinstance(self.backend, TorchBackend):
            raise UsageError("--compile applies to PyTorch weights (.pth, .safetensors), not to "
                             f"an exported model ({type(self.backend).__name__})")
        module: torch.nn.Module = self.backend.module
        if isinstance(module, CompiledInference):  # compiled again: from the eager module
            module = module.module
        self.backend.module = compile_for_inference(module, self.device)  # type: ignore[assignment]

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
        return self.infer_inputs(preprocess(images, self.img_size), sizes)

    def infer_inputs(
        self, batch: np.ndarray, sizes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw top-K outputs for network inputs: ``batch`` float32 ``[N, 3, H, W]`` (see
        :func:`network_input`), ``sizes`` int64 ``[N, 2]`` original ``(w, h)``; boxes xyxy in
        original pixels. A static-batch backend gets the images one by one."""
        if not self.backend.meta.dynamic_batch and len(batch) != 1:
            outs = [self.backend(batch[i : i + 1], sizes[i : i + 1]) for i in range(len(batch))]
            return tuple(np.concatenate(parts) for parts in zip(*outs))  # type: ignore[return-value]
        return self.backend(batch, sizes)

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        conf: ConfInput | FilterSpec | DetectionFilter = DEFAULT_CONF,
        batch_size: int = 1,
        channels: str = "rgb",
        max_det: int | None = None,
        classes: ClassesInput | None = None,
    ) -> list[Detections]:
        """Detect objects in one image or many (see :data:`ImageInput`).

        ``images``: paths, ``HxWx3`` uint8 arrays, PIL images (any mode, converted to RGB),
        ``[3, H, W]`` tensors (uint8, or floating point in 0..1) or a ``[N, 3, H, W]`` batch
        tensor. Keeps detections with score ``>= conf`` (at most ``max_det``, best first).
        Arrays and tensors are taken as RGB by default; pass ``channels="bgr"`` for OpenCV
        frames.

        ``conf`` may also set thresholds per class and ``classes`` keep only some classes,
        by name or 0-based id (see :mod:`dfine_cli.detection_filter`):
        ``conf="0.3,person=0.5"`` or ``{"person": 0.5}``, ``classes=["person", "car"]``.
        """
        keep = detection_filter(conf, classes, self.class_names, DEFAULT_CONF)
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            items: list[Any] = list(images.unbind(0))
        elif isinstance(images, (str, os.PathLike, np.ndarray, torch.Tensor)) or _is_pil(images):
            items = [images]
        else:
            items = list(images)  # type: ignore[arg-type]
        if channels not in ("rgb", "bgr"):
            raise UsageError("channels must be 'rgb' or 'bgr'")
        results: list[Detections] = []
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start : start + max(1, batch_size)]
            arrays: list[np.ndarray] = []
            paths: list[str | None] = []
            for item in chunk:
                if isinstance(item, (np.ndarray, torch.Tensor)):
                    arr = _check_array(item if isinstance(item, np.ndarray) else _tensor_to_array(item))
                    arrays.append(arr[..., ::-1] if channels == "bgr" else arr)
                    paths.append(None)
                elif _is_pil(item):
                    arrays.append(np.array(item.convert("RGB")))
                    paths.append(getattr(item, "filename", None) or None)
                elif not isinstance(item, (str, os.PathLike)):
                    raise UsageError(f"cannot predict on a {type(item).__name__}: give a path, an HxWx3 "
                                     "uint8 array, a PIL image or a [3, H, W] tensor")
                else:
                    arrays.append(read_image_rgb(os.fspath(item)))
                    paths.append(str(item))
            labels, boxes, scores = self.infer_batch(arrays)
            for i, arr in enumerate(arrays):
                results.append(
                    self._to_detections(labels[i], boxes[i], scores[i], arr, paths[i], keep, max_det)
                )
        return results

    def _to_detections(
        self, labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, image: np.ndarray,
        path: str | None, conf: float | DetectionFilter, max_det: int | None = None,
    ) -> Detections:
        h, w = image.shape[:2]
        keep = conf.keep(labels, scores) if isinstance(conf, DetectionFilter) else scores >= conf
        if max_det is not None:
            keep &= np.cumsum(keep) <= max_det  # scores are sorted descending: the best max_det
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


def _check_array(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UsageError(
            f"image arrays must be HxWx3 uint8, got shape {image.shape} dtype {image.dtype}"
        )
    return image


def _is_pil(obj: object) -> bool:
    """True for a PIL image (without importing PIL when it was never loaded)."""
    import sys

    image_module = sys.modules.get("PIL.Image")
    return image_module is not None and isinstance(obj, image_module.Image)


def _tensor_to_array(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` tensor (uint8 0..255, or floating point 0..1) → ``HxWx3`` uint8 array."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise UsageError(f"image tensors must be [3, H, W], got shape {tuple(image.shape)}")
    image = image.detach().cpu()
    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise UsageError(f"image tensors must be uint8 or floating point, got {image.dtype}")
    return image.permute(1, 2, 0).contiguous().numpy()


def _fused_copy(model: DFINE) -> DFINE:
    import copy

    return copy.deepcopy(model).eval().fuse()
