"""The daily quality report: its job and schedule (06:00 UTC, after the night's backlog has drained)."""

from dagster import AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

quality_report_job = define_asset_job(
    "quality_report_job",
    selection=AssetSelection.assets("quality_report"),  # with its SLO checks
    description="Build the quality report, evaluate the SLO checks and push the figures to Prometheus.",
)

quality_report_schedule = ScheduleDefinition(
    name="daily_quality_report",
    job=quality_report_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,  # the report's freshness policy expects a daily run
    description="The daily quality report at 06:00 UTC.",
)
