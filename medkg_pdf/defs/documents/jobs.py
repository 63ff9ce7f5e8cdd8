"""The document chain job: what the sensor, the reconciliation schedule and UI backfills launch.

It runs every step in the run's own process (`in_process_executor`): the chain is a line of
short per-document steps, and a process per step costs an interpreter start and a fresh import
of dagster and PyMuPDF each time (5 to 15 s a step on a busy 2-CPU node, more than the work).
Pools still apply: a `vlm_page_parses` step waits for a `vllm` slot like in any executor.
"""

from dagster import AssetKey, AssetSelection, define_asset_job, in_process_executor

from medkg_pdf.defs.documents import document_assets
from medkg_pdf.defs.partitions import documents

# source_pdf -> page_images -> vlm_page_parses -> structured_document, baseline_parse -> parse_quality
DOCUMENT_CHAIN: list[AssetKey] = [key for asset in document_assets for key in asset.keys]

document_chain_job = define_asset_job(
    name="document_chain_job",
    selection=AssetSelection.assets(*DOCUMENT_CHAIN),
    partitions_def=documents,
    executor_def=in_process_executor,
    description=(
        "The whole chain for the selected documents: PDF intake, page images, VLM parsing, structured "
        "document, text-layer baseline and parse quality. The S3 arrival sensor and the hourly "
        "reconciliation schedule launch it; every launch path, backfills included, runs one document per run."
    ),
)
