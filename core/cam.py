"""Grad-CAM family heatmaps via the ``grad-cam`` package, for any chosen class.

Every call builds the CAM object in a ``with`` block, so its forward/backward hooks
are removed afterwards even on error, and holds the predictor's lock because the
model is shared between sessions. CAMs run in fp32 with gradients enabled, i.e.
outside ``inference_mode``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from core.predictor import Predictor
from core.preprocess import Preprocessed, map_to_original

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM, "layercam": LayerCAM}
CLASS_AGNOSTIC = frozenset({"eigencam"})  # first principal component: ignores the target class
COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
             "viridis": cv2.COLORMAP_VIRIDIS, "hot": cv2.COLORMAP_HOT}


@dataclass
class CamResult:
    """``heatmap``: float32 (H, W) in [0, 1] at the original image size;
    ``peak``: (x, y) of the heatmap maximum as fractions of width and height."""

    heatmap: np.ndarray
    peak: tuple[float, float]
    method: str
    target: str


def compute_cams(predictor: Predictor, items: list[Preprocessed], targets: list[int] | None,
                 method: str = "gradcam") -> list[CamResult]:
    """Heatmaps for a batch, one target class index per image (None: the predicted class)."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {sorted(CAM_METHODS)}")
    if not items:
        return []
    batch = torch.stack([it.tensor(predictor.spec) for it in items]).to(predictor.device)
    model = predictor.model
    with predictor.lock:
        with torch.inference_mode(False), torch.enable_grad():
            if targets is None:
                with torch.no_grad():
                    targets = model(batch).argmax(1).tolist()
            with CAM_METHODS[method](model=model, target_layers=[model.cam_layer]) as cam:
                maps = cam(input_tensor=batch.clone(), targets=[ClassifierOutputTarget(int(t)) for t in targets])
        model.zero_grad(set_to_none=True)  # drop parameter grads left by backward
    out = []
    for item, m, t in zip(items, maps, targets):
        full = map_to_original(np.nan_to_num(m), item)
        h, w = full.shape
        y, x = np.unravel_index(int(full.argmax()), full.shape)
        out.append(CamResult(np.clip(full, 0, 1), ((x + 0.5) / w, (y + 0.5) / h), method,
                             predictor.class_names[int(t)]))
    return out


def overlay(item: Preprocessed, heatmap: np.ndarray, opacity: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """Heatmap blended over the original grey image: uint8 (H, W, 3) RGB."""
    grey = item.decoded.pixels if item.decoded is not None else np.zeros_like(heatmap)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    return show_cam_on_image(rgb, heatmap.astype(np.float32), use_rgb=True,
                             colormap=COLORMAPS.get(colormap, cv2.COLORMAP_JET), image_weight=1.0 - opacity)
