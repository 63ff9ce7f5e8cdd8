"""Resources chosen per environment, in this one place; assets never read the environment.

`MEDKG_ENV=local` (default): files under `MEDKG_DATA_DIR`, and the embedded CPU engine unless
`MEDKG_VLLM_BASE_URL` points at a vLLM server. `MEDKG_ENV=prod`: S3 storage and a vLLM server.
Secrets are passed as `EnvVar`s, so their values never enter run config or the UI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dagster import EnvVar
from dagster_aws.s3 import S3Resource

from medkg_pdf.resources.inbox import InboxConfig
from medkg_pdf.resources.pushgateway import PushgatewayResource
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import DocumentStorage, LocalStorage, S3Storage
from medkg_pdf.resources.vllm import EMBEDDED_MODEL, VLLMResource

PROD_DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


def _s3(environ: Mapping[str, str]) -> S3Resource:
    return S3Resource(
        endpoint_url=environ.get("MEDKG_S3_ENDPOINT_URL") or None,
        region_name=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
        max_attempts=int(environ.get("MEDKG_S3_MAX_ATTEMPTS", "5")),  # botocore retries throttling and 5xx
    )


def vllm_resource(environ: Mapping[str, str], *, default_model: str) -> VLLMResource:
    base_url = environ.get("MEDKG_VLLM_BASE_URL") or None
    settings: dict[str, Any] = {
        "base_url": base_url,
        "model": environ.get("MEDKG_VLLM_MODEL") or (default_model if base_url else EMBEDDED_MODEL),
        "max_concurrency": int(environ.get("MEDKG_VLLM_MAX_CONCURRENCY", "8")),
    }
    if environ.get("MEDKG_VLLM_MODEL_REVISION"):
        settings["model_revision"] = environ["MEDKG_VLLM_MODEL_REVISION"]
    if environ.get("MEDKG_VLLM_PROFILE"):
        settings["profile"] = environ["MEDKG_VLLM_PROFILE"]
    if environ.get("MEDKG_VLLM_RENDER_LONGEST_SIDE"):
        settings["render_longest_side"] = int(environ["MEDKG_VLLM_RENDER_LONGEST_SIDE"])
    if environ.get("MEDKG_VLLM_LOGPROBS"):
        settings["request_logprobs"] = environ["MEDKG_VLLM_LOGPROBS"].strip().lower() not in ("0", "false", "no", "off")
    if environ.get("MEDKG_VLLM_MAX_MODEL_LEN"):
        settings["max_model_len"] = int(environ["MEDKG_VLLM_MAX_MODEL_LEN"])
    if environ.get("MEDKG_VLLM_API_KEY"):
        settings["api_key"] = EnvVar("MEDKG_VLLM_API_KEY")
    return VLLMResource(**settings)


def inbox_config(environ: Mapping[str, str]) -> InboxConfig:
    """The S3 inbox the arrival sensor watches (`MEDKG_INBOX_*`); no bucket: the sensor skips."""
    settings: dict[str, Any] = {
        "bucket": environ.get("MEDKG_INBOX_BUCKET", ""),
        "prefix": environ.get("MEDKG_INBOX_PREFIX", ""),
    }
    for field, name in (
        ("max_per_tick", "MEDKG_INBOX_MAX_PER_TICK"),
        ("lookback_seconds", "MEDKG_INBOX_LOOKBACK_SECONDS"),
        ("minimum_interval_seconds", "MEDKG_INBOX_INTERVAL_SECONDS"),
    ):
        if environ.get(name):
            settings[field] = int(environ[name])
    return InboxConfig(**settings)


_QUALITY_ENV = {
    "window_h": "MEDKG_SLO_WINDOW_HOURS",
    "min_match_score": "MEDKG_GATE_MIN_MATCH_SCORE",
    "min_numeric_recall": "MEDKG_GATE_MIN_NUMERIC_RECALL",
    "max_failed_page_share": "MEDKG_GATE_MAX_FAILED_PAGE_SHARE",
}


def quality_targets(environ: Mapping[str, str]) -> QualityTargets:
    """Gates and SLO targets (docs/quality.md); the SLO window and the three gates can be set per environment."""
    return QualityTargets(**{field: float(environ[name]) for field, name in _QUALITY_ENV.items() if environ.get(name)})


def pushgateway(environ: Mapping[str, str]) -> PushgatewayResource:
    """`MEDKG_PUSHGATEWAY_URL` (e.g. http://pushgateway:9091): the report pushes the SLO figures there."""
    return PushgatewayResource(
        url=environ.get("MEDKG_PUSHGATEWAY_URL") or None, job=environ.get("MEDKG_PUSHGATEWAY_JOB", "medkg_pdf")
    )


def freshness_hours(name: str, default: tuple[float, float], environ: Mapping[str, str] | None = None) -> tuple[float, float]:
    """`MEDKG_FRESHNESS_<NAME>_HOURS="warn,fail"`, e.g. "24,48"; unset: `default`."""
    environ = os.environ if environ is None else environ
    value = environ.get(f"MEDKG_FRESHNESS_{name.upper()}_HOURS")
    if not value:
        return default
    warn, fail = (float(part) for part in value.split(","))
    return warn, fail


def resources_for(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    env = environ.get("MEDKG_ENV", "local")
    s3 = _s3(environ)
    if env == "prod":
        storage: DocumentStorage = S3Storage(
            s3=s3, bucket=EnvVar("MEDKG_S3_BUCKET"), prefix=environ.get("MEDKG_S3_PREFIX", "medkg-pdf")
        )
        if not environ.get("MEDKG_VLLM_BASE_URL"):
            raise RuntimeError("MEDKG_ENV=prod needs MEDKG_VLLM_BASE_URL (the vLLM Service URL)")
        vllm = vllm_resource(environ, default_model=PROD_DEFAULT_MODEL)
    elif env == "local":
        storage = LocalStorage(root=os.path.abspath(environ.get("MEDKG_DATA_DIR", ".medkg-data")))
        vllm = vllm_resource(environ, default_model=PROD_DEFAULT_MODEL)
    else:
        raise RuntimeError(f"MEDKG_ENV must be 'local' or 'prod', not {env!r}")
    return {
        "storage": storage,
        "vllm": vllm,
        "inbox_s3": s3,
        "inbox": inbox_config(environ),
        "quality_targets": quality_targets(environ),
        "pushgateway": pushgateway(environ),
    }
