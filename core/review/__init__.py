"""Many inputs at once: folder and study batches, Ray scale-out, Parquet shards, and the audit trail every
prediction is recorded in.
"""
