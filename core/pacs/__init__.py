"""PACS over DICOMweb: ``client`` (search, retrieve, store, with timeouts and bounded retries) and ``workflow``
(retrieve one series -> review -> build the SR and captures -> send back).
"""
