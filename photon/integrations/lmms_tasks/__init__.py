"""lmms-eval task files for the benchmarks lmms-eval lacks (3D-RAD, DeepTumorVQA, MedFrameQA), over
records written by `photon convert`, scored by Photon's published-protocol scorers.

    python -m photon.integrations.lmms_tasks OUT --records 3d-rad=3drad.jsonl --records medframeqa=mfqa.jsonl
    python -m lmms_eval --model photon --model_args backbone=... --include_path OUT --tasks photon_3drad,photon_medframeqa

The command copies the task YAMLs and utils.py into OUT and writes each benchmark's records there
in the flat form lmms-eval's `json` datasets read (question, answer, absolute media paths, meta as
JSON text); the YAMLs' `data_files` point at those.
"""

from pathlib import Path

TASKS = {"3d-rad": "photon_3drad", "deeptumorvqa": "photon_deeptumorvqa", "medframeqa": "photon_medframeqa"}
HERE = Path(__file__).resolve().parent
