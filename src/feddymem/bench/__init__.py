"""The comparison harness: every method through the same data, features and metrics code.

`feddymem bench --preset quick|full --out DIR` runs (method, data set, seed) rows from a preset
(`presets.py`), each method registered by name in `methods.py`, writes one CSV row per
(method, data set, seed) to ``DIR/results.csv`` (fixed columns, `results.COLUMNS`) and the
table and plots (`report.py`). A finished row is never run twice: re-running the command
resumes; ``--force`` runs again.
"""

from feddymem.bench.methods import METHODS, Method, Outcome, Task
from feddymem.bench.presets import PRESETS, Preset
from feddymem.bench.results import COLUMNS
from feddymem.bench.runner import BenchError, run_bench

__all__ = [
    "COLUMNS",
    "METHODS",
    "PRESETS",
    "BenchError",
    "Method",
    "Outcome",
    "Preset",
    "Task",
    "run_bench",
]
