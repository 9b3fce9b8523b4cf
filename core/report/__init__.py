"""Results a reader takes away: ``pdf`` (PDF reports of a scan, a series or a batch) and ``sr`` (DICOM
Comprehensive 3D SR and Secondary Capture overlays written back into the study).
"""
