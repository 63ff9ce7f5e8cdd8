"""The medkg-pdf code location: wiring only."""

from dagster import Definitions, in_process_executor

from medkg_pdf.assets import document_assets
from medkg_pdf.assets.regression import accepted_baseline, regression_quality
from medkg_pdf.assets.report import quality_report
from medkg_pdf.checks import all_checks
from medkg_pdf.freshness import freshness_policies, with_freshness
from medkg_pdf.jobs import document_chain_job, requality_job
from medkg_pdf.quality_jobs import accept_baseline_job, regression_job
from medkg_pdf.report_schedule import quality_report_job, quality_report_schedule
from medkg_pdf.resources import resources_for
from medkg_pdf.run_deaths import run_death_sensor
from medkg_pdf.schedules import reconciliation_schedule
from medkg_pdf.sensors import build_s3_arrival_sensor

resources = resources_for()
freshness = freshness_policies()

defs = Definitions(
    assets=[
        *with_freshness(document_assets, freshness.documents),
        accepted_baseline,
        regression_quality,
        *with_freshness([quality_report], freshness.report),
    ],
    asset_checks=all_checks,
    jobs=[document_chain_job, requality_job, accept_baseline_job, regression_job, quality_report_job],
    schedules=[reconciliation_schedule, quality_report_schedule],
    sensors=[build_s3_arrival_sensor(minimum_interval_seconds=resources["inbox"].minimum_interval_seconds), run_death_sensor],
    resources=resources,
    # Steps are I/O-bound (the model server does the work); one process per run instead of one per
    # step cuts a run from minutes of interpreter start-ups to seconds. Pools still apply.
    executor=in_process_executor,
)
