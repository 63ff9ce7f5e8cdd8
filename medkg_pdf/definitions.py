"""The medkg-pdf code location: wiring only."""

from dagster import Definitions, in_process_executor

from medkg_pdf.defs.documents import document_assets, document_checks
from medkg_pdf.defs.documents.exports import docling_document
from medkg_pdf.defs.documents.jobs import document_chain_job
from medkg_pdf.defs.documents.schedules import reconciliation_schedule
from medkg_pdf.defs.documents.sensors import dead_run_worker_sensor, run_death_sensor
from medkg_pdf.defs.freshness import freshness_policies, with_freshness
from medkg_pdf.defs.ingest.sensors import build_s3_arrival_sensor
from medkg_pdf.defs.quality.jobs import requality_job
from medkg_pdf.defs.regression.assets import accepted_baseline, regression_quality
from medkg_pdf.defs.regression.checks import regression_quality_no_document_worse
from medkg_pdf.defs.regression.jobs import accept_baseline_job, regression_job
from medkg_pdf.defs.reporting.assets import quality_report
from medkg_pdf.defs.reporting.checks import quality_report_slos
from medkg_pdf.defs.reporting.schedules import quality_report_job, quality_report_schedule
from medkg_pdf.resources import resources_for

resources = resources_for()
freshness = freshness_policies()

defs = Definitions(
    assets=[
        *with_freshness(document_assets, freshness.documents),
        docling_document,  # optional export (the 'docling' extra), not in document_chain_job
        accepted_baseline,
        regression_quality,
        *with_freshness([quality_report], freshness.report),
    ],
    asset_checks=[*document_checks, regression_quality_no_document_worse, quality_report_slos],
    jobs=[document_chain_job, requality_job, accept_baseline_job, regression_job, quality_report_job],
    schedules=[reconciliation_schedule, quality_report_schedule],
    sensors=[build_s3_arrival_sensor(minimum_interval_seconds=resources["inbox"].minimum_interval_seconds), run_death_sensor, dead_run_worker_sensor],
    resources=resources,
    # Steps are I/O-bound (the model server does the work); one process per run instead of one per
    # step cuts a run from minutes of interpreter start-ups to seconds. Pools still apply.
    executor=in_process_executor,
)
