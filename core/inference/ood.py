"""Out-of-distribution ("outside intended use") detection.

Three layers, cheapest first:
  * image gates: a blank frame or a clearly coloured image is not a brain MRI slice;
  * a CT gate (:func:`ct_gate`): a brain CT slice shows a closed, thick skull ring at the very top of the
    intensity range around a flat mid-grey brain, with no dark band between ring and brain (on MRI the
    cortical bone is dark, and the bright ring, where there is one, is scalp fat with dark bone inside it);
  * feature distance: the Mahalanobis distance (Lee et al., 2018) of the penultimate
    features to the nearest class mean, with one shared covariance fitted on the
    training set. The threshold is a high percentile of the validation scores, so
    about 1 % of in-distribution slices are flagged by design.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

from core.preprocess import Preprocessed

COLOUR_LIMIT = 0.06  # mean chroma; grey MRI JPEGs measure < 0.01


@dataclass
class MahalanobisOOD:
    """Class means (K, F) and shared precision (F, F) of training features, plus a threshold."""

    means: torch.Tensor
    precision: torch.Tensor
    threshold: float = float("inf")

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, num_classes: int, shrinkage: float = 1e-3) -> "MahalanobisOOD":
        """Fit on float (N, F) training features and int (N,) labels."""
        x = torch.as_tensor(features, dtype=torch.float64)
        y = torch.as_tensor(labels, dtype=torch.long)
        overall = x.mean(0)
        means = torch.stack([x[y == k].mean(0) if (y == k).any() else overall for k in range(num_classes)])
        centred = x - means[y]
        cov = centred.T @ centred / max(1, len(x) - 1)
        # Shrink towards a scaled identity so the inverse exists even with few samples.
        ridge = shrinkage * torch.trace(cov) / cov.shape[0] + 1e-6
        cov += ridge * torch.eye(cov.shape[0], dtype=torch.float64)
        return cls(means.float(), torch.linalg.inv(cov).float())

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Min over classes of the squared Mahalanobis distance; float (N,). Higher = more unusual."""
        f = features.float().to(self.means.device)
        diff = f[:, None, :] - self.means[None]  # (N, K, F)
        d = torch.einsum("nkf,fg,nkg->nk", diff, self.precision, diff)
        return d.min(dim=1).values

    def calibrate_threshold(self, val_scores: np.ndarray, percentile: float = 99.0) -> float:
        self.threshold = float(np.percentile(val_scores, percentile))
        return self.threshold

    def to(self, device: torch.device) -> "MahalanobisOOD":
        return MahalanobisOOD(self.means.to(device), self.precision.to(device), self.threshold)


def image_gate(colourfulness: float, blank: bool) -> str | None:
    """Reason an image is outside intended use before the model sees it, or None."""
    if blank:
        return "blank image (no contrast): not a brain MRI slice"
    if colourfulness > COLOUR_LIMIT:
        return f"colour image (chroma {colourfulness:.2f}): MRI slices are greyscale"
    return None


# --- CT gate ------------------------------------------------------------------------------------------------
# Measured on the preprocessed head crop (``Preprocessed.image``: the model's input before standardisation,
# intensity window min .. 99.5th percentile inside the head). Bone on a brain-windowed CT is far above that
# window, so the whole skull lands at the top of it.
CT_BRIGHT = 230  # "top of the window" on the 0..255 scale of the crop
CT_RAYS = 90
# The rule (all five must hold). How the cut-offs were chosen, and what they catch and miss, is measured
# by ``python -m tools.ct_audit`` into reports/kaggle_ct_audit.json: each cut-off is the range of the CT
# slices found in Kaggle Training rounded outward (0.05 steps; 0.01 for the thickness), except the ring
# closure, tightened to the loosest 0.05 step that flags no Kaggle Training MRI slice.
CT_RULE = {
    # share of the rays from the head's centre whose outer quarter holds a top-of-window pixel: a closed ring
    "ring_closure": (">=", 0.70),
    # median share of a ray's length that is top-of-window in that outer quarter: a thick ring
    "ring_thickness": (">=", 0.04),
    # darkest pixel in the 10 % of the ray just inside the ring / brain median: no dark (bone) band inside it
    "below_ring": (">=", 0.75),
    # share of the brain (the head's inner part) at the top of the window: the ring is the brightest thing
    "bright_brain": ("<=", 0.10),
    # brain median as a share of the window: a mid-grey brain under a saturated skull
    "brain_level": ("<=", 0.50),
}
CT_REASON = "looks like a CT slice (bright skull ring): the model is for MRI"


@dataclass(frozen=True)
class SkullRing:
    """The CT gate's five measures of one head crop (see :data:`CT_RULE`)."""

    ring_closure: float = 0.0
    ring_thickness: float = 0.0
    below_ring: float = 0.0
    bright_brain: float = 1.0
    brain_level: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    def margin(self) -> float:
        """How far inside the CT rule the weakest measure is: >= 1 means every cut-off holds (``ct_gate`` fires).

        A continuous CT-likeness score for ranking and ROC curves: min over the measures of value / cut-off
        (">=" rules) or cut-off / value ("<=" rules, capped at 10).
        """
        ratios = []
        for name, (op, cut) in CT_RULE.items():
            v = float(getattr(self, name))
            ratios.append(v / cut if op == ">=" else min(10.0, cut / max(v, 1e-6)))
        return float(min(ratios))


def _filled_head(u8: np.ndarray) -> np.ndarray | None:
    """uint8 0/1 mask of the largest bright blob with its holes filled, or None."""
    blur = cv2.GaussianBlur(u8, (5, 5), 0)
    thr, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (blur > max(thr * 0.5, 10)).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask, 8)
    if n < 2:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours((lab == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(u8)
    cv2.drawContours(filled, contours, -1, 1, -1)
    return filled


def skull_ring(image01: np.ndarray) -> SkullRing:
    """The CT gate's measures of a preprocessed head crop: float (S, S) in [0, 1] (or its uint8 copy).

    Rays are cast from the head's centroid (a polar resampling with :data:`CT_RAYS` angles); each ray ends
    at the head's edge, and its outer quarter is where a skull ring would be. About 2-3 ms at 160 px.
    """
    img = np.asarray(image01)
    u8 = img if img.dtype == np.uint8 else (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    head = _filled_head(u8)
    if head is None:
        return SkullRing()
    dist = cv2.distanceTransform(head, cv2.DIST_L2, 5)
    if dist.max() < 5:
        return SkullRing()
    brain = u8[dist > 0.3 * dist.max()]
    level = max(float(np.median(brain)), 1.0)
    bright_brain, brain_level = float((brain >= CT_BRIGHT).mean()), level / 255
    ys, xs = np.nonzero(head)
    centre = (float(xs.mean()), float(ys.mean()))
    n_r = u8.shape[0]
    max_r = float(np.hypot(*u8.shape)) / 2
    polar = cv2.warpPolar(u8, (n_r, CT_RAYS), centre, max_r,
                          cv2.WARP_POLAR_LINEAR + cv2.INTER_LINEAR + cv2.WARP_FILL_OUTLIERS).astype(np.float32)
    inside = cv2.warpPolar(head * 255, (n_r, CT_RAYS), centre, max_r,
                           cv2.WARP_POLAR_LINEAR + cv2.INTER_NEAREST + cv2.WARP_FILL_OUTLIERS) > 0
    r = np.arange(n_r)[None, :]
    edge = np.where((~inside).any(1), (~inside).argmax(1), n_r) - 1  # last head sample before the first gap
    valid = edge >= 10
    if not valid.any():
        return SkullRing(bright_brain=bright_brain, brain_level=brain_level)
    e = edge[:, None].astype(np.float32)
    bright = (polar >= CT_BRIGHT) & (r >= 0.75 * e) & (r <= e)
    has = bright.any(1) & valid
    closure = float(has.sum() / valid.sum())
    thickness = below = 0.0
    if has.any():
        thickness = float(np.median(bright[has].sum(1) / edge[has]))
        r_in = np.where(bright, r, n_r).min(1)  # innermost top-of-window sample of each ray's outer quarter
        band = (r < r_in[:, None]) & (r >= r_in[:, None] - 0.1 * e)
        lows = np.where(band, polar, np.inf).min(1)
        ok = has & np.isfinite(lows)
        if ok.any():
            below = float(np.median(lows[ok]) / level)
    return SkullRing(closure, thickness, below, bright_brain, brain_level)


def ct_gate(image01: np.ndarray) -> str | None:
    """:data:`CT_REASON` when a preprocessed head crop looks like a brain CT slice, else None."""
    return CT_REASON if skull_ring(image01).margin() >= 1.0 else None


def ood_reason(item: Preprocessed, score: float, threshold: float) -> str | None:
    """Why a predicted image is outside intended use, or None: the layers above, cheapest first.

    ``item``: the preprocessed image; ``score``: its Mahalanobis score (kept as the float32 the model gave, so
    the comparison with ``threshold`` is made as it always was); ``threshold``: the model's (inf: no OOD head).
    """
    decoded = item.decoded
    reason = image_gate(decoded.colourfulness if decoded else 0.0, item.blank) or ct_gate(item.image)
    if reason is None and score > threshold:
        reason = f"image features are unlike the training MRI slices (score {score:.0f} > {threshold:.0f})"
    return reason
