"""Predictor shapes/probabilities and Grad-CAM outputs on the tiny dry-run model."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from core.explain.cam import CAM_METHODS, overlay
from core.model.device import select_device
from core.preprocess import preprocess


def test_select_device_prefers_available_and_validates():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            select_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):  # a typo is a clear error, not torch's list
        select_device("gpu0")


def test_predict_probabilities(tiny_predictor, scan_u8):
    pred, pre = tiny_predictor.predict(scan_u8)
    assert set(pred.probabilities) == set(tiny_predictor.class_names)
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert pred.label == max(pred.probabilities, key=pred.probabilities.get)
    assert pred.confidence == pytest.approx(max(pred.probabilities.values()))
    assert pred.logits.shape == (len(tiny_predictor.class_names),)


def test_batched_equals_single(tiny_predictor, rng):
    from core.data.synthetic import fake_scan

    items = [preprocess(fake_scan(rng, 200, k % 4), tiny_predictor.spec) for k in range(6)]
    batched = tiny_predictor.predict_preprocessed(items)
    for it, b in zip(items, batched):
        s = tiny_predictor.predict_preprocessed([it])[0]
        assert np.allclose(list(s.probabilities.values()), list(b.probabilities.values()), atol=1e-5)
    logits, scores = tiny_predictor.logits_and_scores(tiny_predictor.batch_tensor(items))
    assert logits.shape == (6, 4) and scores.shape == (6,)


def test_hflip_tta_averages_a_slice_with_its_mirror(tiny_bundle_dir, rng):
    from core.model.checkpoint import load_bundle
    from core.inference.predictor import Predictor
    from core.data.synthetic import fake_scan

    bundle = load_bundle(tiny_bundle_dir)
    single = Predictor(bundle, torch.device("cpu"), "fp32", tta="none")
    tta = Predictor(bundle, torch.device("cpu"), "fp32", tta="hflip")
    assert tta.describe()["tta"] == "hflip" and single.describe()["tta"] == bundle.tta == "none"
    batch = tta.batch_tensor([preprocess(fake_scan(rng, 200, k), bundle.spec) for k in range(4)])
    mirrored = torch.flip(batch, dims=[-1])
    one, one_scores = single.logits_and_scores(batch)
    other, _ = single.logits_and_scores(mirrored)
    assert not np.allclose(one, other, atol=1e-4)  # the single-view model is not mirror-invariant
    both, scores = tta.logits_and_scores(batch)
    assert np.allclose(both, (one + other) / 2, atol=1e-4)
    assert np.allclose(tta.logits_and_scores(mirrored)[0], both, atol=1e-4)  # a mirrored slice: same answer
    assert np.allclose(scores, one_scores, rtol=1e-5)  # OOD scores come from the unmirrored view
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        Predictor(bundle, torch.device("cpu"), tta="rot90")


def test_blank_and_colour_images_are_outside_intended_use(tiny_predictor, rng):
    from core.data.synthetic import non_mri_image

    blank, _ = tiny_predictor.predict(np.zeros((128, 128), np.uint8))
    assert blank.ood and "blank" in blank.ood_reason
    photo, _ = tiny_predictor.predict(non_mri_image("photo", rng))
    assert photo.ood and "colour" in photo.ood_reason


def test_uncertain_threshold(tiny_predictor, scan_u8):
    pred, _ = tiny_predictor.predict(scan_u8)
    assert pred.is_uncertain(1.01) and not pred.is_uncertain(0.0)


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_cam_shape_range_and_peak(tiny_predictor, tiny_explainer, method):
    # A bright blob off-centre on a dark head; the image is not square on purpose.
    img = np.zeros((240, 320), np.uint8)
    yy, xx = np.mgrid[0:240, 0:320]
    img[((xx - 160) / 120.0) ** 2 + ((yy - 120) / 100.0) ** 2 < 1] = 90
    pre = preprocess(img, tiny_predictor.spec)
    (res,) = tiny_explainer.compute([pre], [2], method)
    assert res.heatmap.shape == (240, 320) and res.heatmap.dtype == np.float32
    assert 0.0 <= res.heatmap.min() and res.heatmap.max() <= 1.0
    px, py = res.peak
    assert 0.0 <= px <= 1.0 and 0.0 <= py <= 1.0
    y, x = np.unravel_index(res.heatmap.argmax(), res.heatmap.shape)
    assert abs(px - (x + 0.5) / 320) < 1e-6 and abs(py - (y + 0.5) / 240) < 1e-6
    ov = overlay(pre, res.heatmap, opacity=0.5, colormap="turbo")
    assert ov.shape == (240, 320, 3) and ov.dtype == np.uint8


def test_cam_for_a_chosen_class_differs_per_target(tiny_predictor, tiny_explainer, scan_u8):
    pre = preprocess(scan_u8, tiny_predictor.spec)
    a, b = tiny_explainer.compute([pre, pre], [0, 3], "gradcam")
    assert a.target == tiny_predictor.class_names[0] and b.target == tiny_predictor.class_names[3]


def test_cam_releases_hooks_and_memory_stays_flat(tiny_predictor, tiny_explainer, scan_u8):
    import psutil

    model = tiny_predictor.model
    pre = preprocess(scan_u8, tiny_predictor.spec)

    def hook_count() -> int:
        return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
                   for m in model.modules())

    before_hooks = hook_count()
    for _ in range(10):  # warm-up: allocator pools, lazy imports
        tiny_explainer.compute([pre], [1], "gradcam")
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    for i in range(150):
        tiny_explainer.compute([pre], [i % 4], ["gradcam", "gradcam++", "eigencam"][i % 3])
    gc.collect()
    growth_mb = (psutil.Process().memory_info().rss - rss0) / 2**20
    assert hook_count() == before_hooks, "CAM hooks were left on the model"
    assert all(p.grad is None for p in model.parameters())
    assert growth_mb < 40, f"RSS grew by {growth_mb:.1f} MB over 150 CAM calls"


def test_unlikely_class_map_is_put_on_the_predicted_class_scale_and_kept_to_the_head(tiny_predictor, tiny_explainer,
                                                                                    rng):
    """A weak class's map is not stretched to full colour: it is scaled by its raw strength against the
    predicted class's map, and zeroed outside the head."""
    from core.explain.cam import on_reading_scale
    from core.preprocess import head_mask
    from core.data.synthetic import fake_scan

    img = np.zeros((240, 240), np.uint8)
    img[20:220, 30:210] = fake_scan(rng, 200, 1)[:, 10:190]  # a head with a wide black border
    pred, pre = tiny_predictor.predict(img)
    head = head_mask(pre, tiny_predictor.spec)
    assert head.shape == (240, 240) and head[120, 120] and not head[:10].any() and not head[:, :15].any()
    maps = {t: tiny_explainer.compute([pre], [t], "gradcam")[0] for t in range(4)}
    assert all(c.strength is not None and c.strength >= 0 for c in maps.values())
    ref = maps[pred.index]
    for t, cam in maps.items():
        shown = on_reading_scale(cam, head, None if t == pred.index else ref)
        expected = 1.0 if t == pred.index or not ref.strength else min(1.0, cam.strength / ref.strength)
        assert shown.scale == pytest.approx(expected)
        assert shown.heatmap.max() <= expected + 1e-6
        assert not shown.heatmap[~head].any()  # nothing painted on the background
        px, py = shown.peak_pixel()
        assert shown.heatmap.max() == 0 or head[py, px]  # the peak is inside the head
    # the library engine keeps no raw scale: the map is only masked
    lib = tiny_explainer.compute([pre], [0], "gradcam", engine="library")[0]
    assert lib.strength is None and on_reading_scale(lib, head, ref).scale == 1.0


def test_overlay_is_drawn_over_the_image_as_analysed(tiny_predictor):
    """A 12-bit slice in a 16-bit container: the overlay's grey is the preprocessing's window, not near black."""
    from core.io.display import analysed_window, grey_display
    from core.io.dicom import apply_display_window
    from core.io.types import array_to_grey
    from core.preprocess import analysed_view, preprocess_decoded
    from core.data.synthetic import fake_scan

    decoded = array_to_grey(fake_scan(np.random.default_rng(2), 192, 1).astype(np.uint16) * 16, "PNG", "I;16")
    pre = preprocess_decoded(decoded, tiny_predictor.spec)
    assert decoded.pixels.max() < 0.07 and pre.window[1] < 0.07
    view = analysed_view(pre)
    assert view.max() == pytest.approx(1.0) and view.mean() > 0.15
    blend = overlay(pre, np.zeros_like(view), opacity=0.0)
    assert blend.mean() > 40  # not the almost-black raw scale
    disp = grey_display(decoded)
    centre, width = analysed_window(disp, decoded.pixels, pre.window)
    assert 0 < width < 4200  # in the file's 16-bit grey levels
    assert np.abs(apply_display_window(disp, centre, width) - view).max() < 0.01
