"""The medkg-pdf code location: wiring only."""

from dagster import Definitions

from medkg_pdf.assets import document_assets
from medkg_pdf.resources import resources_for

defs = Definitions(
    assets=document_assets,
    resources=resources_for(),
)
