"""The daily quality report: scores, page outcomes and SLOs of the documents of the last window.

Written to `reports/quality/<day>/` as CSV (and Parquet when pyarrow is installed) plus PNG plots
(scores per document, latency per hour, one page with its blocks' boxes: `medkg_pdf.report_plots`),
summarised in the asset's metadata (the plots embedded, so the Dagster UI shows them), pushed to a Prometheus Pushgateway when one is configured, and judged by the SLO checks in
`medkg_pdf.defs.reporting.checks`, which re-read the CSV this asset wrote.
"""

import io
import json
from collections import Counter
from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from medkg_pdf import fleet, prometheus, slo, storage_keys
from medkg_pdf.chat_contract import png_data_url
from medkg_pdf.quality_gates import BLOCKING_GATES
from medkg_pdf.report_plots import latency_figure, provenance_figure, score_figure, to_png
from medkg_pdf.resources.pushgateway import PushgatewayResource
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import PageImages, ReportPointer, StructuredDocument, utc_now

WORST_DOCUMENTS = 10
PROVENANCE_CANDIDATES = 5
PLOT_TITLES = {"scores.png": "scores per document", "latency.png": "latency percentiles per hour", "provenance.png": "where a page's blocks came from"}

try:  # Parquet is a bonus: the CSV is the contract
    import pyarrow  # noqa: F401  (pandas finds it by name)

    HAVE_PYARROW = True
except ImportError:
    HAVE_PYARROW = False


def read_report_documents(storage: DocumentStorage, pointer: ReportPointer) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(storage.read_bytes(pointer.documents_csv)))


def provenance_png(storage: DocumentStorage, cohort: pd.DataFrame) -> bytes | None:
    """The first page with boxes of the lowest-scoring completed document that has any (a few are tried)."""
    completed = cohort[cohort["status"] == "completed"].sort_values("match_score", na_position="last")
    for _, row in completed.head(PROVENANCE_CANDIDATES).iterrows():
        document = storage.read_model_or_none(storage_keys.structured_json(row["document_id"]), StructuredDocument)
        manifest = storage.read_model_or_none(storage_keys.page_images(row["document_id"]), PageImages)
        if document is None or manifest is None:
            continue
        for image in manifest.pages:
            figure = provenance_figure(document, image.index + 1, storage.read_bytes(image.key), image.dpi, str(row["name"]))
            if figure is not None:
                return to_png(figure)
    return None


def _img(png: bytes, alt: str) -> str:
    return f"![{alt}]({png_data_url(png)})"


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "n/a" if value is None or pd.isna(value) else fmt.format(value)


def slo_table(report: slo.SloReport) -> str:
    ok = {True: "met", False: "**missed**"}
    rows = ["| SLO | measured | target | status |", "|---|---|---|---|"]
    for name in slo.QUANTILES:
        rows.append(
            f"| latency {name} | {_num(report.latency_s[name], '{:.1f} s')} | < {report.targets.latency_target(name):g} s | "
            f"{ok[report.latency_ok[name]]} |"
        )
    rows.append(
        f"| throughput while backlog | {_num(report.throughput_per_h, '{:.1f}/h')} | >= {report.targets.throughput_per_h:g}/h | "
        f"{ok[report.throughput_ok]} |"
    )
    rows.append(
        f"| error rate | {_num(report.error_rate, '{:.2%}')} | < {report.targets.max_error_rate:.0%} | {ok[report.error_rate_ok]} |"
    )
    return "\n".join(rows)


def worst_table(cohort: pd.DataFrame) -> str:
    rows = ["| document | status | match score | numeric recall | pages failed | regression | outputs |", "|---|---|---|---|---|---|---|"]
    if not len(cohort):
        return "\n".join(rows + ["| none | | | | | | |"])
    ranked = cohort.assign(
        _failed=(cohort["status"] == "failed").astype(int),
        _score=cohort["match_score"].astype(float).fillna(2.0),  # no baseline sorts after the scored ones
    ).sort_values(["_failed", "_score"], ascending=[False, True])
    for _, row in ranked.head(WORST_DOCUMENTS).iterrows():
        links = [f"[{label}]({row[column]})" for label, column in (("json", "structured_json"), ("md", "structured_md"), ("quality", "quality_json")) if isinstance(row[column], str)]
        status = row["status"] if row["status"] != "failed" else f"failed at {row['failure_stage']}: {row['failure_reason']} ({row['failure_class']})"
        rows.append(
            f"| `{row['document_id']}` | {status} | {_num(row['match_score'])} | {_num(row['numeric_recall'])} | "
            f"{_num(row['pages_failed'], '{:.0f}')} | {row['regression_verdict'] if isinstance(row['regression_verdict'], str) else ''} | "
            f"{' '.join(links)} |"
        )
    return "\n".join(rows)


@asset(
    group_name="reports",
    deps=["parse_quality", "regression_quality"],
    kinds={"pandas", "csv"},
    description="Daily: per-document scores, page outcomes, latency percentiles vs the SLOs and the worst "
    "documents of the SLO window, as CSV + plots in storage and pushed to Prometheus.",
)
def quality_report(
    context: AssetExecutionContext,
    storage: DocumentStorage,
    quality_targets: QualityTargets,
    pushgateway: PushgatewayResource,
) -> MaterializeResult:
    now = utc_now()
    day = now.date().isoformat()
    targets = quality_targets.slo()
    everything = fleet.load_documents(storage)
    classified = slo.classify(everything, targets)
    report = slo.evaluate(classified, now, targets)
    cohort = fleet.with_details(storage, slo.in_window(classified, now, targets.window, targets))
    over_time = slo.latency_over_time(classified, now, targets.window, freq="1h", targets=targets)
    page_counts: Counter = Counter()
    for statuses in cohort["page_statuses"].dropna():
        page_counts.update(statuses)

    files: dict[str, str] = {}

    def put(name: str, data: bytes) -> str:
        key = storage_keys.quality_report(day, name)
        files[name] = storage.write_bytes(key, data)
        return key

    table = cohort.assign(page_statuses=cohort["page_statuses"].map(lambda s: json.dumps(s) if isinstance(s, dict) else ""))
    documents_key = put("documents.csv", table.to_csv(index=False).encode())
    put("latency-per-hour.csv", over_time.to_csv(index_label="hour").encode())
    put("page-status.csv", pd.Series(page_counts, name="pages", dtype=int).rename_axis("status").to_csv().encode())
    slo_key = put("slo.json", json.dumps({"evaluated_at": now.isoformat(), **report.as_dict()}, indent=2).encode())
    if HAVE_PYARROW:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        put("documents.parquet", buffer.getvalue())
    gates = {score: getattr(quality_targets, minimum) for _, score, minimum in BLOCKING_GATES}
    plots = {"scores.png": to_png(score_figure(cohort, gates)), "latency.png": to_png(latency_figure(over_time, report))}
    provenance = provenance_png(storage, cohort)
    if provenance is not None:
        plots["provenance.png"] = provenance
    for name, png in plots.items():
        put(name, png)
    registry = prometheus.registry_for(everything, report, now)
    put("metrics.prom", prometheus.exposition(registry).encode())
    pointer = ReportPointer(day=day, evaluated_at=now, documents_csv=documents_key, slo_json=slo_key)
    storage.write_model(storage_keys.quality_report_latest(), pointer)

    pushed = None
    if pushgateway.configured:
        try:
            pushed = pushgateway.push(registry)
        except OSError as error:  # a monitoring outage must not lose the report
            context.log.warning(f"could not push the SLO figures to {pushgateway.url}: {error}")

    summary = "\n\n".join(
        [
            f"**{report.documents} document{'' if report.documents == 1 else 's'}** arrived in the window {report.window_start:%Y-%m-%d %H:%M} - "
            f"{report.window_end:%Y-%m-%d %H:%M} UTC: {report.completed} completed, {report.failed} failed, "
            f"{report.pending} pending.",
            slo_table(report),
            "**Pages**: " + (", ".join(f"{status} {count}" for status, count in page_counts.most_common()) or "none"),
            "**Worst documents**\n\n" + worst_table(cohort),
            *(_img(png, PLOT_TITLES[name]) for name, png in plots.items()),
        ]
    )
    metadata: dict[str, Any] = {
        "report": MetadataValue.md(summary),
        "documents": report.documents,
        "completed": report.completed,
        "failed": report.failed,
        "pending": report.pending,
        "latency_p50_s": report.latency_s["p50"],
        "latency_p95_s": report.latency_s["p95"],
        "latency_p99_s": report.latency_s["p99"],
        "throughput_per_h": report.throughput_per_h,
        "error_rate": report.error_rate,
        "mean_match_score": float(cohort["match_score"].astype(float).mean()) if cohort["match_score"].notna().any() else None,
        "page_status": dict(page_counts),
        "files": MetadataValue.md("\n".join(f"- [{name}]({uri})" for name, uri in files.items())),
        "parquet": "written" if HAVE_PYARROW else "skipped: pyarrow is not installed",
        "pushgateway": pushed or ("push failed" if pushgateway.configured else "not configured (MEDKG_PUSHGATEWAY_URL)"),
    }
    return MaterializeResult(metadata={key: value for key, value in metadata.items() if value is not None})
