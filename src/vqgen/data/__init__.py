"""Data sources, records and pre-tokenized code shards."""
from vqgen.data.records import Record

__all__ = ["Record"]
