"""medkg-pdf: medical PDFs to trustworthy structured documents, as Dagster assets."""

__version__ = "0.1.0"
