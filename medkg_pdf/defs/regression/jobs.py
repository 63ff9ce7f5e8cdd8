"""Jobs people launch on purpose: accept documents as the regression baseline, and compare against it."""

from dagster import AssetSelection, define_asset_job

from medkg_pdf.defs.partitions import documents

accept_baseline_job = define_asset_job(
    "accept_baseline",
    selection=AssetSelection.assets("accepted_baseline"),
    partitions_def=documents,
    description="Pin the current structured documents of the selected partitions as their regression baseline "
    "(after a person reviewed them).",
)

regression_job = define_asset_job(
    "regression_check",
    selection=AssetSelection.assets("regression_quality"),  # with its check
    partitions_def=documents,
    description="Compare the current structured documents with their accepted baselines (after a model or prompt change).",
)
