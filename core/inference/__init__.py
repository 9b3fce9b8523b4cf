"""From a preprocessed slice to a result.

Open, by task:

* ``pipeline``: THE streaming path from files to predictions (``stream``, or its two stages ``load_file`` and
  ``predict_batch``), used by every consumer;
* ``predictor``: :class:`~core.inference.predictor.Predictor`, batched calibrated prediction -> ``Prediction``;
* ``ood``: the outside-intended-use gates (blank, colour, CT skull ring, Mahalanobis distance);
* ``calibration``: temperature scaling and the calibration error;
* ``study``: every slice of a series predicted, and the series verdict (``SeriesRule``).
"""
