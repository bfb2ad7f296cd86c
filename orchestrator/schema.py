"""The version of the results contract (run-folder files), in one place for writers and readers.

A run folder's `trials.parquet`, `history.parquet` (or `history.parts/`) and `experiment.json`
together are the interface notebooks and other tools read (columns: docs/results.md). Each file
carries `SCHEMA_VERSION`: Parquet files in their key-value metadata under `SCHEMA_KEY`,
`experiment.json` as its `schema_version` key, so a reader can refuse a contract it does not
know instead of misreading it. Raise the number when a column or key is renamed, removed or
changes meaning; adding a column or key keeps it.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
SCHEMA_KEY = "schema_version"  # the Parquet key-value metadata key, and experiment.json's key
