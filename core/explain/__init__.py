"""Where the model looked: Grad-CAM family heatmaps.

Open ``cam`` for the methods, the engines and the :class:`~core.explain.cam.Explainer` (its own lock, so heatmaps
never disturb the predictor's shared model); ``study_cams``: a reviewed series' slice heatmap as a reader sees it
(``slice_cam``), and ``SliceCams``, which keeps them and computes the shown slice's neighbours ahead.
"""
