"""Where the SLO figures are pushed: a Prometheus Pushgateway, or nowhere when no URL is set."""

from __future__ import annotations

from dagster import ConfigurableResource
from prometheus_client import CollectorRegistry
from pydantic import Field


class PushgatewayResource(ConfigurableResource):
    url: str | None = Field(default=None, description="e.g. http://pushgateway:9091 (MEDKG_PUSHGATEWAY_URL); unset: no push.")
    job: str = Field(default="medkg_pdf", description="The Pushgateway group the report replaces on each push.")
    timeout_s: float = 10.0

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def push(self, registry: CollectorRegistry) -> str | None:
        """Push and return the group URL, or None when no gateway is configured."""
        if not self.url:
            return None
        from medkg_pdf import prometheus  # pandas and the metric families load only when a report is pushed

        prometheus.push(registry, self.url, job=self.job, timeout_s=self.timeout_s)
        return f"{self.url.rstrip('/')}/metrics/job/{self.job}"
