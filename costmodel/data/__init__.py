"""The measured-runtime dataset: its schema and rows (`schema`), Parquet shards (`shards`),
immutable releases (`release`), reading it back (`loader`), and importers of public data
(`importers`)."""
from costmodel.data.schema import DATA_DIR, DATASETS_DIR, RELEASES_DIR, TABLES, Provenance
from costmodel.data.shards import ShardWriter, read_table

__all__ = ["DATASETS_DIR", "DATA_DIR", "RELEASES_DIR", "TABLES", "Provenance", "ShardWriter", "read_table"]
