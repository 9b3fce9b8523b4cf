"""Reading inputs: bytes, files, DICOM, NIfTI volumes and DICOM series -> grey images and slice stacks.

Open, by task:

* ``types``: what every reader returns (:class:`~core.io.types.DecodedImage`: float32 (H, W) in [0, 1]) and
  the decode limits;
* ``decode``: THE dispatcher for one image (path, bytes or array): sniffs the content, routes to ``raster``
  (JPEG/PNG/TIFF/BMP through Pillow, plus the reduced-size JPEG decode of the fast path) or ``dicom``
  (modality LUT, window, MONOCHROME1, safe tags only);
* ``read_series``: the dispatcher for whole series (uploads, zips, folders), over the readers ``series_nifti``
  and ``series_dicom``; ``series`` holds :class:`~core.io.series.Series` (RAS+ volume, slices of any plane) and
  the reader base class; ``volumes`` cuts NIfTI volumes into display-oriented axial slices;
* ``files``: safe, streaming folder walks and list files of paths or URIs;
* ``display``: the window/level a viewer starts from.

Every reader raises :class:`core.errors.ImageLoadError` with a message a reader can act on. Patient-identifying
DICOM tags stay here unless explicitly asked for.
"""
