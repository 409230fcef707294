"""Reports built from study results alone (Parquet + JSON): HTML, Markdown and figures."""

from .build import build_report
from .stats import difference, estimate

__all__ = ["build_report", "difference", "estimate"]
