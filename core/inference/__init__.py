"""From a preprocessed slice to a result: the predictor, the one streaming pipeline, OOD gates,
temperature calibration and the per-series verdict.
"""
