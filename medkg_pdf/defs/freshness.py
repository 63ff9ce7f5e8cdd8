"""Freshness policies: how old the newest output may get before Dagster marks it warn / fail.

Dagster 1.13's `FreshnessPolicy.time_window` is evaluated by the daemon against the asset's
last materialization (for the partitioned chain: of any document). Windows are configurable
per environment (`MEDKG_FRESHNESS_DOCUMENTS_HOURS`, `MEDKG_FRESHNESS_REPORT_HOURS`, "warn,fail").
The stage modules stay untouched: policies are attached to their specs at wiring time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from dagster import AssetsDefinition, FreshnessPolicy

from medkg_pdf.resources import freshness_hours

# Documents arrive around the clock at ~50/h: a chain that produced nothing for a day is stuck
# (or the inbox is empty, which is worth a look too); after two days it is an incident.
DOCUMENTS_DEFAULT_H = (24.0, 48.0)
# The report runs daily at 06:00 UTC: an hour late warns, a missed run (plus slack) fails.
REPORT_DEFAULT_H = (25.0, 30.0)


def time_window(warn_h: float, fail_h: float) -> FreshnessPolicy:
    return FreshnessPolicy.time_window(fail_window=timedelta(hours=fail_h), warn_window=timedelta(hours=warn_h))


@dataclass(frozen=True)
class FreshnessPolicies:
    documents: FreshnessPolicy
    report: FreshnessPolicy


def freshness_policies(environ: Mapping[str, str] | None = None) -> FreshnessPolicies:
    return FreshnessPolicies(
        documents=time_window(*freshness_hours("documents", DOCUMENTS_DEFAULT_H, environ)),
        report=time_window(*freshness_hours("report", REPORT_DEFAULT_H, environ)),
    )


def with_freshness(assets: Iterable[AssetsDefinition], policy: FreshnessPolicy) -> list[AssetsDefinition]:
    """The same assets with `policy` on every spec (the asset functions are unchanged)."""
    return [asset.map_asset_specs(lambda spec: spec.replace_attributes(freshness_policy=policy)) for asset in assets]
