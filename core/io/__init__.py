"""Reading inputs: bytes, files, DICOM, NIfTI volumes and DICOM series -> grey images and slice stacks.

Every reader raises :class:`core.errors.ImageLoadError` with a message a reader can act on. Patient-identifying
DICOM tags stay here unless explicitly asked for.
"""
