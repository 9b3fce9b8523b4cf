"""Many inputs at once, and the record of every prediction.

Open, by task:

* ``folder``: a folder or list file of slices, one row per file (``run_batch``; the columns: ``csv_columns``);
* ``studies``: a folder of studies, one row per series plus a row per slice;
* ``ray_engine``: the same two pipeline stages on Ray Data;
* ``results_csv``: the resumable results CSV; ``shards``: the same rows as Parquet shards;
* ``audit_trail``: the SQLite audit trail of every prediction and of the readers' feedback.
"""
