"""Re-score stored parses without the model server (in the run's own process, like the chain job)."""

from dagster import AssetKey, AssetSelection, define_asset_job, in_process_executor

from medkg_pdf.defs.partitions import documents

requality_job = define_asset_job(
    name="requality_job",
    selection=AssetSelection.assets(AssetKey("parse_quality")),
    partitions_def=documents,
    executor_def=in_process_executor,
    description=(
        "Only `parse_quality`: re-scores stored parses against the text-layer baseline (after a metric "
        "or baseline change) without sending a page to the model server."
    ),
)
