"""Dagster definitions, one folder per feature; `medkg_pdf.definitions` wires them together.

- `ingest/`: the S3 arrival sensor that registers documents and launches their runs.
- `documents/`: the per-document chain (source PDF, page images and VLM parses, text layer,
  structured document), its checks, its job and the reconciliation schedule.
- `quality/`: a document's parse scored against its text layer, the blocking gates, re-scoring.
- `regression/`: a reviewed document pinned as baseline, and later parses compared with it.
- `reporting/`: the daily quality report, its SLO checks and the Prometheus push.

Shared by the features: `partitions` (one document per run), `document_steps` (honest per-document
state: failures, quarantine, retries), `check_support` (per-partition checks), `freshness`.
"""
