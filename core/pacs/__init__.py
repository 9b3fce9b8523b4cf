"""PACS over DICOMweb: the client (search, retrieve, store) and the retrieve -> review -> send workflow.
"""
