"""Results a reader takes away: PDF reports and DICOM Structured Reports / Encapsulated PDF.
"""
