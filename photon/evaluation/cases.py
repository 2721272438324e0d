"""Reading prediction files (docs/records.md) into cases, joining references by id.

Bad lines never stop a long evaluation unless asked (strict): each is described by file and
line and reported, and the case is left out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from photon.core.errors import PhotonError

EFFICIENCY_FIELDS = ("n_visual", "n_kept", "keep_ratio", "prefill_s", "decode_s", "total_s")
RUN_FIELDS = ("backbone", "mode", "rule")


@dataclass
class Case:
    """One prediction with what scoring needs: the raw answer, the reference, the meta."""

    id: str
    answer: str
    reference: str | None
    meta: dict[str, Any]
    benchmark: str | None = None
    efficiency: dict[str, float] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "file:line", for messages


@dataclass
class Loaded:
    cases: list[Case]
    problems: list[str]  # bad records, each naming file and line
    missing: list[str]  # reference ids with no prediction (only with --ref)


class Problems:
    """Collects bad records; with strict=True the first one stops the run."""

    def __init__(self, strict: bool, items: list[str] | None = None):
        self.strict = strict
        self.items: list[str] = list(items or [])

    def add(self, message: str) -> None:
        if self.strict:
            raise PhotonError(f"{message} (--strict stops at the first bad record)")
        self.items.append(message)


def read_jsonl(path: Path, problems: Problems, what: str) -> Iterator[tuple[str, dict]]:
    """(source, object) per non-blank line; bad JSON and non-objects go to problems."""
    if not path.is_file():
        raise PhotonError(f"{what} file {path} does not exist")
    with path.open(encoding="utf-8") as handle:
        lines = handle.readlines()
    for number, line in enumerate(tqdm(lines, desc=f"reading {path.name}", unit="line", disable=None), 1):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(f"{source}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            problems.add(f"{source}: expected a JSON object, got {type(obj).__name__}")
            continue
        yield source, obj


def _message_text(content: Any) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def reference_from_record(record: dict) -> str | None:
    """The last assistant message of an ms-swift record: the reference answer."""
    answers = [m for m in record.get("messages") or [] if isinstance(m, dict) and m.get("role") == "assistant"]
    return _message_text(answers[-1].get("content")) if answers else None


def load_references(path: Path, problems: Problems) -> dict[str, dict]:
    """id -> {meta, reference, benchmark} from a records file written by `photon convert`."""
    refs: dict[str, dict] = {}
    for source, record in read_jsonl(path, problems, "reference"):
        rid = record.get("id")
        if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
            problems.add(f"{source}: record has no 'id'")
            continue
        if str(rid) in refs:
            problems.add(f"{source}: id {rid!r} repeats an earlier record")
            continue
        meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
        refs[str(rid)] = {"meta": meta, "reference": reference_from_record(record), "benchmark": record.get("benchmark")}
    return refs


def _efficiency(obj: dict) -> dict[str, float]:
    out = {}
    for name in EFFICIENCY_FIELDS:
        value = obj.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def load_predictions(path: str | Path, ref_path: str | Path | None = None, *, strict: bool = False) -> Loaded:
    """Cases from a predictions JSONL; with ref_path, meta and reference are filled by id
    (the prediction's own values win where both exist)."""
    problems = Problems(strict)
    path = Path(path)
    refs = load_references(Path(ref_path), problems) if ref_path is not None else None
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for source, obj in read_jsonl(path, problems, "predictions"):
        pid = obj.get("id")
        if not isinstance(pid, (str, int)) or isinstance(pid, bool) or str(pid) == "":
            problems.add(f"{source}: prediction has no 'id'")
            continue
        pid = str(pid)
        if pid in seen:
            problems.add(f"{source}: id {pid!r} repeats {seen[pid]}")
            continue
        seen[pid] = source
        if "answer" not in obj:
            problems.add(f"{source}: prediction {pid!r} has no 'answer' (the raw model output)")
            continue
        answer = obj["answer"]
        if answer is not None and not isinstance(answer, str):
            problems.add(f"{source}: 'answer' of {pid!r} should be a string, got {type(answer).__name__}")
            continue
        meta = dict(obj["meta"]) if isinstance(obj.get("meta"), dict) else {}
        reference = obj.get("reference")
        benchmark = obj.get("benchmark")
        if refs is not None:
            ref = refs.get(pid)
            if ref is None and not meta:
                problems.add(f"{source}: id {pid!r} is not in {ref_path} and the prediction carries no meta")
                continue
            if ref is not None:
                meta = {**ref["meta"], **meta}
                reference = reference if reference is not None else ref["reference"]
                benchmark = benchmark or ref["benchmark"]
        cases.append(
            Case(
                id=pid,
                answer=answer or "",
                reference=None if reference is None else str(reference),
                meta=meta,
                benchmark=benchmark,
                efficiency=_efficiency(obj),
                run={k: obj[k] for k in RUN_FIELDS if k in obj},
                source=source,
            )
        )
    missing = sorted(set(refs) - set(seen)) if refs is not None else []
    if missing and strict:
        raise PhotonError(f"{len(missing)} records of {ref_path} have no prediction in {path} (first: {missing[0]!r})")
    return Loaded(cases=cases, problems=problems.items, missing=missing)
