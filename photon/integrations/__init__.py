"""Photon inside other engines: lmms-eval (lmms_eval.py, and task files for the benchmarks it lacks in lmms_tasks/)."""
