"""The demo's static HTML report (metrics tables, training curves, sample pictures) and the demo folder layout."""

from karpalign.report.build import ReportError, build_report

__all__ = ["ReportError", "build_report"]
