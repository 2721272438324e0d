"""Benchmark evaluation: answer parsing, metrics, per-benchmark scorers (registered through the
register_metrics hook), bootstrap intervals and reports. `photon eval` is the command;
docs/evaluation.md gives each benchmark's protocol and every deviation from its release.
"""

from photon.evaluation.evaluate import compare_files, evaluate_file
from photon.evaluation.scoring import EvalOptions, Scorer, Scoring

__all__ = ["EvalOptions", "Scorer", "Scoring", "compare_files", "evaluate_file"]
