"""Core engine of the brain MRI slice review tool. UI-free: never imports streamlit.

Sub-packages, in the order a slice flows through them (``docs/architecture.md`` has the diagram):

* ``core.io``: bytes -> :class:`core.io.types.DecodedImage` (JPG/PNG/TIFF/DICOM), volumes and series;
* ``core.preprocess``: the one preprocessing definition (head crop, resize, standardise), read from the card;
* ``core.model``: architectures, the checkpoint and model card, device choice, precision back-ends, TTA;
* ``core.inference``: the predictor, the one streaming pipeline, OOD gates, calibration, per-series verdicts;
* ``core.explain``: Grad-CAM;
* ``core.review``: many inputs at once (folder and study batches, Ray, shards) and the audit trail;
* ``core.evaluation``: metrics, evaluation of a bundle, the dataset audit, the product's targets;
* ``core.data``: training data: the data spec, sources, leak-free splits, augmentation;
* ``core.report`` / ``core.pacs``: PDF and DICOM SR results, and the DICOMweb client.

Entry points: ``python -m core.batch``, ``python -m core.evaluate``, ``python -m core.audit``.
"""
__version__ = "1.0.0"
