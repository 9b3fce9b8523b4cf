"""How good the model is.

Open, by task:

* ``metrics``: metrics with bootstrap intervals (``evaluate_predictions``, the dict the metrics page draws);
* ``evaluate``: a bundle evaluated on a labelled folder or on its held-out parts, through the serving pipeline;
* ``source_eval``: per-source and per-sequence held-out figures (sensitivity, specificity, pointing game);
* ``data_audit``: exact and near duplicates, sizes, channels, leakage across splits;
* ``targets``: the product's written acceptance targets, judged on those figures.
"""
