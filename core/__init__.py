"""Core engine of the brain MRI slice review tool. UI-free: never imports streamlit.

Modules, one idea each: ``image_io``/``dicom_io`` (decode), ``preprocess`` (the one
input pipeline), ``model``, ``checkpoint`` (safe I/O + model card), ``device``,
``predictor``, ``cam`` (Grad-CAM), ``ood``, ``calibration``, ``metrics``, ``audit``,
``dataset``, ``files`` (safe folder walking), ``batch`` (CLI runner), ``evaluate``; for training
from several sources: ``data_spec`` (the declaration), ``volumes`` (NIfTI slices), ``sources`` (indexing),
``splits`` (leak-free parts), ``source_eval`` (per-source metrics), ``targets``, ``pretrained``.
"""
__version__ = "1.0.0"
