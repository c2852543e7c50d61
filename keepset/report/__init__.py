"""Stage 7 of the data flow: what a person reads. The issues table (one row per sample, like cleanlab
Datalab's ``get_issues()``) and a static HTML report of a run folder or a benchmark folder.

Nothing imports this package except the command line and ``keepset.issues``.
"""

from keepset.report.build import write_report
from keepset.report.issues import issues, issues_table, write_issues
from keepset.report.run import Run, load_run

__all__ = ["issues", "issues_table", "write_issues", "write_report", "load_run", "Run"]
