"""Everything a fit (or a comparison of fits) writes: tables, JSON, figures and report.md.

    from hetvc.report import write_report
    summary = write_report("out", fits)        # fits: model name → FitResult

One module a job, each documented in its own docstring; a module imports only those above it:

* :mod:`~hetvc.report.selection` — model names, the comparison table, the selected model (lowest
  AICc among converged fits), the excluded models and why;
* :mod:`~hetvc.report.text` — p-values, SEs and times as text, and the terminal summary of a fit;
* :mod:`~hetvc.report.csv_tables` — the CSV tables;
* :mod:`~hetvc.report.summary_json` — the machine-readable summary (``summary.json``, ``--json``);
* :mod:`~hetvc.report.report_md` — report.md;
* :mod:`~hetvc.report.figures` — the figures (matplotlib; not imported with the package);
* :mod:`~hetvc.report.write` — :func:`write_report`: every file (listed there), atomically.
"""

from .report_md import markdown
from .selection import comparison, excluded, model_name, preferences, select, selection_lines
from .summary_json import MODEL_KEYS, RANDOM_MODEL_KEYS, SUMMARY_FORMAT, SUMMARY_KEYS, summary
from .csv_tables import tables
from .text import fit_text, format_p, format_se, seconds_text, shared_notes
from .write import write_report

__all__ = [
    "SUMMARY_FORMAT", "SUMMARY_KEYS", "MODEL_KEYS", "RANDOM_MODEL_KEYS", "model_name", "comparison", "select",
    "excluded", "preferences", "selection_lines", "format_p", "format_se", "fit_text",
    "shared_notes", "seconds_text", "tables", "summary", "markdown", "write_report",
]
