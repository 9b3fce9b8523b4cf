"""Grad-CAM family heatmaps for any chosen class, computed in batches.

Two engines give the same maps (bench checks the largest difference):

* ``native`` (default for :class:`core.model.architectures.Classifier`, whose CAM layer is a backbone
  block): one forward pass up to the CAM layer without gradients, then only the rest
  (the blocks after it, if any, and the tiny pool -> head graph) is differentiated
  (``torch.autograd.grad`` with respect to the CAM activations). No hooks, no parameter
  gradients, the whole batch at once on the predictor's device; the maths of GradCAM,
  GradCAM++, LayerCAM and EigenCAM is that of the ``grad-cam`` package (same
  normalisation and map -> S px upsampling).
  Nothing on the shared model is touched, so concurrent predictions are unaffected.
* ``library``: the ``grad-cam`` package itself. Every call builds the CAM object in a
  ``with`` block, so its forward/backward hooks are removed afterwards even on error.
  The hooks go on the :class:`Explainer`'s private copy of the predictor's model (made
  on first use), never on the model that serves predictions: a forward hook fires for
  *every* forward through the module, so a prediction running in another session's
  thread while a CAM was being computed used to slip its activations into that CAM
  (wrong heatmaps).

:class:`Explainer` is the entry point: one per predictor, shared by every thread that
asks for heatmaps of that model (the dashboard keeps one per loaded model per process).
Both engines hold its lock and run with gradients enabled, i.e. outside
``inference_mode``; the CAM forward is fp32 (on CUDA the backbone may run under the
predictor's autocast dtype; the differentiated head is always fp32).
"""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from core.inference.predictor import Predictor
from core.preprocess import Preprocessed, analysed_view, map_to_original

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM, "layercam": LayerCAM}
CLASS_AGNOSTIC = frozenset({"eigencam"})  # first principal component: ignores the target class
CAM_METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "EigenCAM", "layercam": "LayerCAM"}
CAM_ENGINES = ("auto", "native", "library")
COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
             "viridis": cv2.COLORMAP_VIRIDIS, "hot": cv2.COLORMAP_HOT}


@dataclass
class CamResult:
    """``heatmap``: float32 (H, W) in [0, 1] at the original image size;
    ``peak``: (x, y) of the heatmap maximum as fractions of width and height;
    ``strength``: the map's peak before it was stretched to [0, 1] (native engine only, else None). For
    Grad-CAM it is in logit units, so it compares the evidence for two classes of one image;
    ``scale``: the factor already applied to ``heatmap`` by :func:`on_reading_scale` (1 = its own scale)."""

    heatmap: np.ndarray
    peak: tuple[float, float]
    method: str
    target: str
    strength: float | None = None
    scale: float = 1.0

    def peak_pixel(self) -> tuple[int, int]:
        """The peak as (x, y) pixel indices of the original image."""
        h, w = self.heatmap.shape
        return min(w - 1, int(self.peak[0] * w)), min(h - 1, int(self.peak[1] * h))


def native_supported(model: torch.nn.Module) -> bool:
    """The native engine needs backbone (CAM layer = backbone block ``cam_index``) -> pool -> head."""
    backbone = getattr(model, "backbone", None)
    index = getattr(model, "cam_index", None)
    return (isinstance(backbone, torch.nn.Sequential) and isinstance(index, int) and 0 <= index < len(backbone)
            and getattr(model, "cam_layer", None) is backbone[index]
            and all(hasattr(model, a) for a in ("pool", "head")))


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    """grad-cam's ``scale_cam_image`` normalisation, per image of an (N, H, W) batch."""
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    cam = cam - lo
    hi = cam.flatten(1).max(dim=1).values[:, None, None]
    return cam / (1e-7 + hi)


def _native_maps(predictor: Predictor, batch: torch.Tensor, targets: list[int] | None,
                 method: str) -> tuple[np.ndarray, list[int], list[float | None]]:
    """(N, S, S) float32 maps in [0, 1] at model resolution, the target used per image and each map's
    peak before normalisation (its strength)."""
    model = predictor.model
    size = batch.shape[-2:]
    amp = predictor.amp_dtype if predictor.device.type == "cuda" else None
    split = model.cam_index + 1  # blocks up to the CAM layer run without gradients; the rest is differentiated
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(
            predictor.device.type, dtype=amp, enabled=amp is not None):
        acts = model.backbone[:split](batch)
    acts = acts.float().detach().requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        logits = model.head(torch.flatten(model.pool(model.backbone[split:](acts)), 1))
        if targets is None:
            targets = logits.argmax(1).tolist()
        grads = None
        if method not in CLASS_AGNOSTIC:
            idx = torch.as_tensor([int(t) for t in targets], device=logits.device)
            score = logits.gather(1, idx[:, None]).sum()
            (grads,) = torch.autograd.grad(score, acts)
    a = acts.detach()
    if method == "gradcam":
        cam = (grads.mean(dim=(2, 3))[:, :, None, None] * a).sum(1)
    elif method == "gradcam++":
        g2 = grads ** 2
        g3 = g2 * grads
        aij = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3 + 1e-6)
        aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
        cam = ((grads.clamp(min=0) * aij).sum(dim=(2, 3))[:, :, None, None] * a).sum(1)
    elif method == "layercam":
        cam = (grads.clamp(min=0) * a).sum(1)
    else:  # eigencam: the library's own SVD on the CPU, so the sign convention is identical
        cam = torch.from_numpy(get_2d_projection(a.cpu().numpy())).to(a.device)
    cam = cam.clamp(min=0)
    strengths = [float(v) for v in cam.flatten(1).max(dim=1).values.cpu()]
    cam = _minmax(cam)
    cam = F.interpolate(cam[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    cam = _minmax(cam.clamp(min=0))  # grad-cam's aggregate step over the (single) layer
    return cam.float().cpu().numpy(), [int(t) for t in targets], strengths


def _library_maps(model: torch.nn.Module, batch: torch.Tensor, targets: list[int] | None,
                  method: str) -> tuple[np.ndarray, list[int], list[float | None]]:
    """The grad-cam package's maps, hooked into ``model`` (the explainer's private copy)."""
    maps = None
    with torch.inference_mode(False), torch.enable_grad():
        if targets is None:
            with torch.no_grad():
                targets = model(batch).argmax(1).tolist()
        with CAM_METHODS[method](model=model, target_layers=[model.cam_layer]) as cam:
            maps = cam(input_tensor=batch.clone(), targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.zero_grad(set_to_none=True)  # drop parameter grads left by backward
    if maps is None:  # grad-cam's __exit__ swallows IndexError (prints it) and leaves nothing
        raise RuntimeError(f"{method} failed to compute a heatmap (see the message printed above)")
    return maps, [int(t) for t in targets], [None] * len(targets)  # the library keeps no raw scale


class Explainer:
    """Grad-CAM family heatmaps of one :class:`Predictor`'s model, one computation at a time.

    Share one per predictor between threads: :attr:`lock` serialises the CAM passes (the library engine's
    hooks live on :meth:`_library_model`, this explainer's private copy of the model, made on first use; the
    native engine needs no copy). Predictions on the predictor itself never wait for this lock.
    """

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.lock = threading.Lock()
        self._copy: tuple[torch.nn.Module, torch.nn.Module] | None = None  # (model copied, its private copy)

    def _library_model(self) -> torch.nn.Module:
        """The private copy the library engine hooks into; call with :attr:`lock` held."""
        source, model = self._copy or (None, None)
        if model is None or source is not self.predictor.model:  # rebuilt if the predictor swaps its model
            model = copy.deepcopy(self.predictor.model).eval()
            self._copy = (self.predictor.model, model)
        return model

    def maps(self, batch: torch.Tensor, targets: list[int] | None, method: str = "gradcam",
             engine: str = "auto") -> tuple[np.ndarray, list[int]]:
        """Heatmaps at model resolution for a standardised batch already on the device.

        ``targets``: one class index per image (None: the predicted classes); ``engine``: one of
        :data:`CAM_ENGINES` ("auto": native where :func:`native_supported`, else library).
        Returns float32 (N, S, S) maps in [0, 1] and the target class index used per image.
        """
        maps, targets, _ = self._maps_with_strength(batch, targets, method, engine)
        return maps, targets

    def _maps_with_strength(self, batch: torch.Tensor, targets: list[int] | None, method: str,
                            engine: str) -> tuple[np.ndarray, list[int], list[float | None]]:
        """:meth:`maps` plus each map's strength (None from the library engine)."""
        if method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {method!r}; choose one of {sorted(CAM_METHODS)}")
        if engine not in CAM_ENGINES:
            raise ValueError(f"engine must be one of {CAM_ENGINES}")
        if engine == "auto":
            engine = "native" if native_supported(self.predictor.model) else "library"
        with self.lock:
            if engine == "native":
                return _native_maps(self.predictor, batch, targets, method)
            return _library_maps(self._library_model(), batch, targets, method)

    def compute(self, items: list[Preprocessed], targets: list[int] | None, method: str = "gradcam",
                engine: str = "auto") -> list[CamResult]:
        """Heatmaps for a batch, one target class index per image (None: the predicted class).

        The whole list is one forward pass; callers with thousands of images pass chunks
        (``core.evaluation.source_eval`` passes its chunk, ``core.inference.pipeline`` its batch).
        """
        if method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {method!r}; choose one of {sorted(CAM_METHODS)}")
        if not items:
            return []
        return self.results(items, self.predictor.batch_tensor(items), targets, method, engine)

    def results(self, items: list[Preprocessed], batch: torch.Tensor, targets: list[int] | None,
                method: str = "gradcam", engine: str = "auto") -> list[CamResult]:
        """:meth:`compute` for callers that already hold the items' standardised (N, C, S, S) batch."""
        maps, targets, strengths = self._maps_with_strength(self.predictor.to_device(batch), targets, method, engine)
        return [_result(item, m, t, method, self.predictor.class_names, s)
                for item, m, t, s in zip(items, maps, targets, strengths)]

    def warmup(self, method: str = "gradcam") -> float:
        """One dummy batch-1 heatmap so the first real one does not pay the one-time kernel setup (and, with the
        library engine, the model copy). For servers: call once after loading. Returns the seconds it took."""
        t0 = time.perf_counter()
        s, c = self.predictor.spec.image_size, self.predictor.spec.channels
        self.maps(self.predictor.to_device(torch.zeros(1, c, s, s)), [0], method)
        return time.perf_counter() - t0


def _peak(full: np.ndarray) -> tuple[float, float]:
    h, w = full.shape
    y, x = np.unravel_index(int(full.argmax()), full.shape)
    return (x + 0.5) / w, (y + 0.5) / h


def _result(item: Preprocessed, m: np.ndarray, t: int, method: str, class_names: list[str],
            strength: float | None = None) -> CamResult:
    full = map_to_original(np.nan_to_num(m), item)
    return CamResult(np.clip(full, 0, 1), _peak(full), method, class_names[int(t)], strength)


def on_reading_scale(cam: CamResult, head: np.ndarray, reference: CamResult | None = None) -> CamResult:
    """The map as a reader should see it: kept to the head, and a weak class's map not stretched to full colour.

    Args:
        cam: the map to show (its own [0, 1] scale).
        head: bool (H, W) head mask (:func:`core.preprocess.head_mask`); the map is zeroed outside it, so
            evidence painted on the background is not shown as a finding.
        reference: the predicted class's map of the same image and method. When both carry a strength, ``cam``
            is put on the reference's scale (factor ``cam.strength / reference.strength``, at most 1): a class
            with little evidence then shows a faint map instead of hot blocks.
    Returns a new result (``scale`` records the factor); the peak is searched inside the head.
    """
    scale = 1.0
    if reference is not None and cam.strength is not None and reference.strength:
        scale = float(min(1.0, max(0.0, cam.strength / reference.strength)))
    shown = np.where(head, cam.heatmap, 0.0).astype(np.float32) * scale
    peak = _peak(shown) if shown.max() > 0 else cam.peak
    return CamResult(shown, peak, cam.method, cam.target, cam.strength, scale)


def overlay(item: Preprocessed, heatmap: np.ndarray, opacity: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """Heatmap blended over the image as the model saw it (:func:`core.preprocess.analysed_view`):
    uint8 (H, W, 3) RGB. ``heatmap``: float (H, W) in [0, 1], drawn on a fixed 0-1 colour scale."""
    grey = analysed_view(item) if item.decoded is not None else np.zeros_like(heatmap)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    return show_cam_on_image(rgb, heatmap.astype(np.float32), use_rgb=True,
                             colormap=COLORMAPS.get(colormap, cv2.COLORMAP_JET), image_weight=1.0 - opacity)
