"""Answering with a wrapped model: one question about one input (ask), or a records file (infer).

Decoding is greedy. Timings split generate() at the end of its first forward pass: prefill
(time to the first token: the vision encoder and the pruned prefill) and decode (every later
token). In a batch each prediction carries the batch's times divided by its size, so that
their sum is the run's time.
Prediction lines carry exactly the fields docs/records.md lists, ready for `photon eval`.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from photon.adapters.base import Loaded
from photon.bench.clock import synchronize
from photon.core.api import runtime_of
from photon.core.errors import PhotonError
from photon.core.files import write_atomic
from photon.modalities.base import Media, choose_loader
from photon.modalities.dataset import PhotonDataset, Problem, Sample, print_problem
from photon.wrapping import media_options as default_options
from photon.wrapping import rule_of

PREDICTION_FIELDS = (
    "id", "benchmark", "meta", "reference", "answer", "backbone", "mode", "rule",
    "n_visual", "n_kept", "keep_ratio", "theta", "prefill_s", "decode_s", "total_s", "settings", "record",
)
# What a resumed run does with a kept prediction whose record changed (or left --data).
ON_CHANGE = ("refuse", "redo")
# Selection settings that change which tokens a run keeps (besides backbone, mode and rule).
SELECTION_SETTINGS = ("keep_ratio", "theta", "keep", "min_keep", "tau", "cache", "rule")
DEFAULT_MAX_NEW_TOKENS = 128
# generate() fills unset values from the model's generation_config (Qwen's sets sampling and a
# repetition penalty): spelling out the neutral values keeps decoding a plain argmax.
PLAIN_GREEDY = dict(
    do_sample=False, num_beams=1, temperature=1.0, top_k=50, top_p=1.0, typical_p=1.0,
    repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0,
)


@dataclass
class Generated:
    """One sample's answer and what the selection did for it."""

    answer: str
    n_visual: int
    n_kept: int
    theta: float | None
    prefill_s: float
    decode_s: float
    selection: dict | None = None  # the sample's last_selection record (None when nothing was selected)

    @property
    def keep_ratio(self) -> float | None:
        return self.n_kept / self.n_visual if self.n_visual else None

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s


@dataclass
class Asked:
    """ask()'s result: the answer, the run's settings, and the input as the model saw it."""

    result: Generated
    backbone: str
    mode: str
    rule: str
    layer: int | None
    media: list[Media] = field(default_factory=list)
    media_s: float = 0.0
    baseline: Generated | None = None  # the unpruned model's answer, when asked for
    prompt: str = ""  # the text the model saw, each run of visual placeholders collapsed (collapse_placeholders)

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        report = {
            "answer": r.answer, "backbone": self.backbone, "mode": self.mode, "rule": self.rule, "layer": self.layer,
            **_counts_and_times(r), "media_s": round(self.media_s, 6), "prompt": self.prompt,
        }
        if self.baseline is not None:
            report["baseline"] = {"answer": self.baseline.answer, **_counts_and_times(self.baseline)}
        return report


def _counts_and_times(r: Generated) -> dict[str, Any]:
    return {
        "n_visual": r.n_visual, "n_kept": r.n_kept, "keep_ratio": r.keep_ratio, "theta": r.theta,
        "prefill_s": round(r.prefill_s, 6), "decode_s": round(r.decode_s, 6), "total_s": round(r.total_s, 6),
    }


@contextlib.contextmanager
def unpruned(model):
    """Run the stock forward (no selection, nothing removed) while inside."""
    runtime = runtime_of(model)
    enabled = runtime.enabled
    runtime.enabled = False
    try:
        yield model
    finally:
        runtime.enabled = enabled


def stop_ids(loaded: Loaded) -> list[int]:
    encoder = loaded.encoder
    ids = {encoder.im_end_id, encoder.tokenizer.eos_token_id}
    configured = loaded.model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def generate_batch(loaded: Loaded, batch: dict[str, Any], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[Generated]:
    """Greedy answers for an encoded batch (QwenEncoder.collate), with per-sample selection facts."""
    from transformers import GenerationConfig

    from photon.adapters.qwen_inputs import model_inputs

    if max_new_tokens < 1:
        raise PhotonError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    model = loaded.model
    runtime = runtime_of(model)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_inputs(batch).items() if k != "labels"}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, eos_token_id=stop_ids(loaded), pad_token_id=loaded.encoder.pad_id, **PLAIN_GREEDY
    )
    marks: list[float] = []

    def mark(*_):
        synchronize(device)
        marks.append(time.perf_counter())

    runtime.records = []  # a batch without visual tokens selects nothing: no stale records
    handle = model.register_forward_hook(mark)
    try:
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            sequences = model.generate(**inputs, generation_config=config)
        synchronize(device)
        end = time.perf_counter()
    finally:
        handle.remove()
    prompt = inputs["input_ids"]
    size = prompt.shape[0]
    prefill = (marks[0] - start) / size
    decode = (end - marks[0]) / size
    n_visual = (runtime.adapter.visual_kinds(prompt) > 0).sum(1).tolist()
    records = runtime.records if runtime.enabled else []
    tokenizer = loaded.encoder.tokenizer
    results = []
    for b in range(size):
        answer = tokenizer.decode(sequences[b, prompt.shape[1]:], skip_special_tokens=True).strip()
        record = records[b] if b < len(records) else None
        kept = record["n_kept"] if record is not None else n_visual[b]
        theta = record["theta"] if record is not None else None
        results.append(Generated(answer, int(n_visual[b]), int(kept), theta, prefill, decode, record))
    return results


def check_question(question: str | None) -> str:
    if not question or not question.strip():
        raise PhotonError("the question is empty; ask something about the input, e.g. --question 'Is there a nodule?'")
    return question.strip()


def question_sample(media: list[Media], question: str, id: str = "ask") -> Sample:
    """A one-turn user message: one tag per medium, then the question."""
    tags = "".join("<image>" if m.kind == "image" else "<video>" for m in media)
    return Sample(id, [{"role": "user", "content": tags + check_question(question)}], media)


def load_inputs(paths: list[Any], options: dict[str, dict[str, Any]]) -> list[Media]:
    """Each path through the modality a plugin chooses, with the options for that modality; a
    MONAI MetaTensor as a CT volume (its affine decides orientation), a Media as it is."""
    from photon.modalities.monai_bridge import is_metatensor, media_from_metatensor

    media = []
    for path in paths:
        if isinstance(path, Media):
            media.append(path)
            continue
        if is_metatensor(path):
            media.append(media_from_metatensor(path, **options.get("ct", {})))
            continue
        name, loader = choose_loader(path)
        media.append(loader(Path(path), **options.get(name, {})))
    return media


def ask(
    loaded: Loaded,
    inputs: Any,
    question: str,
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    media_options: dict[str, dict[str, Any]] | None = None,
    baseline: bool = False,
) -> Asked:
    """Answer `question` about a volume, image or video (or several) with the wrapped model.

    inputs: a path, a MONAI MetaTensor, a Media, or a list of them.
    baseline=True also answers with the unpruned stock forward (Asked.baseline), after one
    untimed warm-up pass so that neither timed run pays one-time initialisation.
    """
    from photon.modalities.monai_bridge import is_metatensor

    single = isinstance(inputs, (str, Path, Media)) or is_metatensor(inputs)
    paths = [inputs] if single else list(inputs)
    check_question(question)  # before the (slow) loading
    started = time.perf_counter()
    media = load_inputs(paths, media_options or default_options(loaded))
    media_s = time.perf_counter() - started
    encoder = loaded.encoder
    encoded = encoder.encode(question_sample(media, question), train=False)
    batch = encoder.collate([encoded])
    runtime = runtime_of(loaded.model)
    unpruned_result = None
    if baseline:
        with unpruned(loaded.model):
            generate_batch(loaded, batch, 1)
            unpruned_result = generate_batch(loaded, batch, max_new_tokens)[0]
    result = generate_batch(loaded, batch, max_new_tokens)[0]
    from photon.adapters.qwen_inputs import collapse_placeholders

    return Asked(result, loaded.backbone, runtime.config.mode, rule_of(loaded.model), runtime.layer, media, media_s,
                 unpruned_result, collapse_placeholders(encoded.get("prompt", "")))


# -- records -> predictions ----------------------------------------------------------------
def reference_of(messages: list[dict[str, str]]) -> str | None:
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    return answers[-1] if answers else None


def prediction_line(entry, result: Generated, run: dict[str, str], settings: dict[str, Any], record: str) -> dict[str, Any]:
    """One line of a predictions file (docs/records.md), fields in its order. record: the record's
    digest (record_digest), which a resumed run compares before reusing the line."""
    line = {
        "id": entry.id, "benchmark": entry.benchmark, "meta": entry.meta, "reference": reference_of(entry.messages),
        "answer": result.answer, **run, **_counts_and_times(result), "settings": settings, "record": record,
    }
    return {key: line[key] for key in PREDICTION_FIELDS}


def record_digest(entry, digests) -> str:
    """What the answer to a record depends on besides the run's settings: its messages (question and
    reference), benchmark and meta, and the content of each medium (not its path, so moved data stays
    done). digests: a photon.core.digests.Digests (file digests cached by size and mtime)."""
    import hashlib

    from photon.modalities.monai_bridge import is_metatensor, metatensor_digest

    media = [[name, metatensor_digest(item) if is_metatensor(item) else digests.content(item)] for name, item in entry.media]
    text = json.dumps({"messages": entry.messages, "benchmark": entry.benchmark, "meta": entry.meta, "media": media},
                      sort_keys=True, ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def run_settings(loaded: Loaded, *, prune: bool, max_new_tokens: int, media_options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What else decides a run's answers: appending to a file written with other settings would
    mix two runs under one name. Media options are kept as a digest (they are long)."""
    import hashlib

    runtime = runtime_of(loaded.model)
    media = json.dumps(media_options, sort_keys=True, default=str)
    settings: dict[str, Any] = {
        "pruner": getattr(runtime.pruner, "name", type(runtime.pruner).__name__) if prune else "none",
        "layer": runtime.layer if prune else None,
        "max_new_tokens": max_new_tokens,
        "media": hashlib.sha256(media.encode()).hexdigest()[:16],
    }
    if prune:
        settings.update({key: getattr(runtime.config, key) for key in SELECTION_SETTINGS})
    return settings


def question_text(messages: list[dict[str, str]]) -> str:
    """The last user turn's words, without media tags."""
    from photon.modalities.dataset import TAG_PATTERN

    users = [m["content"] for m in messages if m["role"] == "user"]
    return TAG_PATTERN.sub("", users[-1]).strip() if users else ""


def _other_run(row: dict[str, Any], run: dict[str, str], settings: dict[str, Any]) -> list[str]:
    """How a kept line's run differs from this one: backbone, mode, rule, settings."""
    differ = [f"{k} {row.get(k)} -> {v}" for k, v in run.items() if row.get(k) != v]
    recorded = row.get("settings")
    if isinstance(recorded, dict):
        differ += [f"{k} {recorded.get(k)} -> {v}" for k, v in settings.items() if recorded.get(k) != v]
    return differ


def read_rows(path: Path, report: Callable[[str], None]) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) of a predictions file; a line cut short by an interrupted run is reported and left out."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    good, bad = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "id" not in row:
                raise ValueError("no id")
            good.append((line, row))
        except ValueError:
            bad.append(n)
    if bad:
        report(f"{path}: dropping {len(bad)} unreadable line(s) ({', '.join(map(str, bad[:5]))}), likely cut short by an interrupted run")
    return good


def part_files(out: Path) -> list[Path]:
    """Every rank's part file of a sharded run into `out`, whatever process count wrote it."""
    return sorted(out.parent.glob(f".{out.name}.part-*-of-*")) if out.parent.is_dir() else []


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def reconcile(out: Path, dataset, data: str | Path, run: dict[str, str], settings: dict[str, Any], *, on_change: str,
              report: Callable[[str], None]) -> set[str]:
    """Before a run (rank 0 of a sharded one): fold every part file an earlier run left, of any process
    count, into `out`; keep a prediction only if it answers the record as it is now (same digest) with
    this run's settings. Predictions of another run are refused (--overwrite starts again); changed
    records and ids no longer in --data are refused too, or, with on_change "redo", dropped so they
    are predicted again. Returns the ids kept."""
    parts = [p for p in part_files(out) if not p.name.endswith((".stats.json", ".tmp"))]
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    for path in [out, *parts]:
        for line, row in read_rows(path, report):
            rows.setdefault(str(row["id"]), (line, row))
    if not rows and not parts:
        return set()
    entries = {entry.id: entry for entry in dataset.entries}
    for _, row in rows.values():
        differ = _other_run(row, run, settings)
        if differ:
            raise PhotonError(f"{out} holds predictions from another run ({'; '.join(differ)}). "
                              "Pass --overwrite to start again, or write to another --out")
    from photon.core.digests import Digests

    with Digests() as digests:
        changed = [i for i, (_, row) in rows.items() if i in entries and row.get("record") != record_digest(entries[i], digests)]
    unproven = [i for i in changed if not rows[i][1].get("record")]  # written by a Photon that recorded no digest
    gone = [i for i in rows if i not in entries]
    if (changed or gone) and on_change != "redo":
        said = []
        if len(changed) > len(unproven):
            moved = [i for i in changed if i not in unproven]
            said.append(f"{len(moved)} answer records that changed since they were predicted ({_ids(moved)})")
        if unproven:
            said.append(f"{len(unproven)} carry no record digest (written by an older Photon), so nothing shows they "
                        f"answer the records as they are now ({_ids(unproven)})")
        if gone:
            said.append(f"{len(gone)} are for ids not in {data} ({_ids(gone)})")
        raise PhotonError(f"{out}: kept predictions no longer match --data: {'; '.join(said)}. Pass --on-change redo to "
                          "predict the changed records again and drop the others, --overwrite to start again, or another --out")
    for i in changed + gone:
        del rows[i]
    if changed or gone:
        report(f"{out}: predicting {len(changed)} changed record(s) again; dropped {len(gone)} prediction(s) of records not in --data")
    order = {entry.id: n for n, entry in enumerate(dataset.entries)}
    ranked = sorted(rows, key=lambda i: (order.get(i, len(order)), i))
    text = "".join(rows[i][0] + "\n" for i in ranked)
    if not out.is_file() or out.read_text(encoding="utf-8") != text:  # folded parts, dropped or cut lines
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text)
    for stale in part_files(out):
        stale.unlink(missing_ok=True)
    return set(ranked)


@dataclass
class InferOutcome:
    written: int
    resumed: int  # ids found already done in the output
    skipped: int  # bad records (reported)
    out: Path
    seconds: float = 0.0
    ranks: list[dict] = field(default_factory=list)  # per-rank facts of a sharded run (on every rank)

    def __str__(self) -> str:
        return f"wrote {self.written} predictions to {self.out} ({self.resumed} already there, {self.skipped} bad records skipped)"


@dataclass(frozen=True)
class Shard:
    """This process's part of a data-parallel run: records rank, rank + size, ... in input order.

    Each rank writes its own part file beside --out, resumable by id like --out itself; once all
    ranks are done, rank 0 merges the parts into --out in input order and removes them."""

    rank: int
    size: int
    barrier: Callable[[], None] = lambda: None

    def part(self, out: Path, rank: int | None = None) -> Path:
        return out.with_name(f".{out.name}.part-{self.rank if rank is None else rank}-of-{self.size}")

    def stats(self, out: Path, rank: int | None = None) -> Path:
        part = self.part(out, rank)
        return part.with_name(part.name + ".stats.json")


def infer(
    loaded: Loaded,
    data: str | Path | list[dict[str, Any]],
    out: str | Path,
    *,
    batch_size: int = 4,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    media_options: dict[str, dict[str, Any]] | None = None,
    strict: bool = False,
    overwrite: bool = False,
    on_change: str = "refuse",
    prune: bool = True,
    progress: bool = True,
    report: Callable[[str], None] = print_problem,
    shard: Shard | None = None,
) -> InferOutcome:
    """Predict every record of `data` (a records file, or a list of records whose media may be MONAI
    MetaTensors) into the JSONL `out`, resuming: a prediction already in `out` (or
    in the part files of an earlier sharded run, of any process count) is kept when it answers the
    record as it is now with these settings (reconcile; on_change decides about changed records).
    Bad records are reported and skipped (strict: stop). prune=False predicts with the stock forward
    (mode "unpruned"), the baseline to compare with. shard: this process's share of a data-parallel
    run (Shard); every rank calls infer, and every rank's outcome carries the run's totals."""
    from tqdm import tqdm

    from photon.core.digests import Digests

    if batch_size < 1:
        raise PhotonError(f"batch size must be at least 1, got {batch_size}")
    if on_change not in ON_CHANGE:
        raise PhotonError(f"on_change {on_change!r}: expected {' or '.join(ON_CHANGE)}")
    out = Path(out)
    shard = shard or Shard(0, 1)
    sharded = shard.size > 1
    target = shard.part(out) if sharded else out
    runtime = runtime_of(loaded.model)
    media_options = media_options or default_options(loaded)
    run = {"backbone": loaded.backbone, "mode": runtime.config.mode if prune else "unpruned",
           "rule": rule_of(loaded.model) if prune else "none"}
    settings = run_settings(loaded, prune=prune, max_new_tokens=max_new_tokens, media_options=media_options)
    dataset = PhotonDataset(
        data, encoder=loaded.encoder, strict=strict, train=False, media_options=media_options, report=report,
    )
    if not isinstance(data, (str, Path)):
        data = "<records>"
    if not dataset.entries:
        raise PhotonError(f"{data}: no usable record ({len(dataset.problems)} skipped); nothing to predict")
    if shard.rank == 0:
        if overwrite:
            for path in [out, *part_files(out)]:
                path.unlink(missing_ok=True)
        reconcile(out, dataset, data, run, settings, on_change=on_change, report=report)
    shard.barrier()  # --out is whole and the old parts are gone before any rank reads or writes
    done = {str(row["id"]) for _, row in read_rows(out, report=lambda _: None)}
    mine = range(shard.rank, len(dataset.entries), shard.size)
    todo = []
    for i in mine:
        entry = dataset.entries[i]
        if entry.id in done:
            continue
        if not question_text(entry.messages):
            # Nothing to ask: ITS would find no instruction and keep every token, silently.
            dataset.skip(Problem(entry.where, entry.id, "the question is empty (the last user message holds only media tags)"))
            continue
        todo.append(i)
    resumed = sum(1 for i in mine if dataset.entries[i].id in done)
    if resumed and shard.rank == 0:
        report(f"{out}: resuming, {len(done)} records already predicted")
    total = sum(1 for entry in dataset.entries if entry.id not in done) if sharded else len(todo)
    written = 0
    started = time.perf_counter()
    context = contextlib.nullcontext() if prune else unpruned(loaded.model)
    # One bar for the whole run: rank 0 counts what every rank's part file holds.
    with context, Digests() as digests, tqdm(total=total, unit="record", desc="infer", disable=not progress or shard.rank != 0) as bar:
        for start in range(0, len(todo), batch_size):
            indices = todo[start : start + batch_size]
            encoded = [(i, dataset[i]) for i in indices]
            encoded = [(i, item) for i, item in encoded if item is not None]
            if encoded:
                batch = loaded.encoder.collate([item for _, item in encoded])
                results = generate_batch(loaded, batch, max_new_tokens)
                lines = [prediction_line(dataset.entries[i], r, run, settings, record_digest(dataset.entries[i], digests))
                         for (i, _), r in zip(encoded, results)]
                # One write per batch: an interrupted run loses at most the line being written. The file
                # is created by the first answers, so a run that fails before any leaves none behind.
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "a", encoding="utf-8") as sink:
                    sink.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
                written += len(lines)
                ratios = [r.keep_ratio for r in results if r.keep_ratio is not None]
                if ratios:
                    bar.set_postfix(kept=f"{sum(ratios) / len(ratios):.0%}")
            if sharded:
                bar.n = min(total, _part_lines(out, shard))
                bar.refresh()
            else:
                bar.update(len(indices))
        seconds = time.perf_counter() - started
        outcome = InferOutcome(written, resumed, len(dataset.problems), out, seconds)
        if sharded:
            facts = {"rank": shard.rank, "written": written, "resumed": resumed, "skipped": len(dataset.problems), "seconds": seconds}
            write_atomic(shard.stats(out), json.dumps(facts))
            shard.barrier()  # every part and its facts are complete
            ranks = [json.loads(shard.stats(out, rank).read_text()) for rank in range(shard.size)]
            shard.barrier()  # every rank has read the facts before rank 0 removes them
            if shard.rank == 0:
                bar.n = total
                bar.refresh()
                merge_parts(dataset, out, shard)
            shard.barrier()  # the merged file exists before any rank returns
            # The run's totals on every rank, so each exits with the same code; a bad record is every
            # rank's (each reads the whole records file), so it is counted once.
            outcome.written = sum(r["written"] for r in ranks)
            outcome.resumed = sum(r["resumed"] for r in ranks)
            outcome.ranks = ranks
    return outcome


def _part_lines(out: Path, shard: Shard) -> int:
    count = 0
    for rank in range(shard.size):
        part = shard.part(out, rank)
        if part.is_file():
            with open(part, "rb") as handle:
                count += sum(1 for _ in handle)
    return count


def merge_parts(dataset, out: Path, shard: Shard) -> None:
    """Rank 0, after every rank finished: --out's lines and every part's, each id once, in the
    records' input order, written atomically; the parts and their facts go."""
    rows: dict[str, str] = {}
    for path in [out, *(shard.part(out, r) for r in range(shard.size))]:
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rows.setdefault(str(json.loads(line)["id"]), line)
    order = {entry.id: n for n, entry in enumerate(dataset.entries)}
    ranked = sorted(rows, key=lambda i: (order.get(i, len(order)), i))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, "".join(rows[i] + "\n" for i in ranked))
    for rank in range(shard.size):
        shard.stats(out, rank).unlink(missing_ok=True)
        shard.part(out, rank).unlink(missing_ok=True)


def kept_summary(path: Path) -> str:
    """The merged predictions' visual tokens: kept of total, and the mean keep ratio."""
    visual = kept = 0
    ratios = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        visual += row.get("n_visual") or 0
        kept += row.get("n_kept") or 0
        if row.get("keep_ratio") is not None:
            ratios.append(row["keep_ratio"])
    mean = f", mean keep ratio {sum(ratios) / len(ratios):.1%}" if ratios else ""
    return f"kept {kept:,} of {visual:,} visual tokens ({kept / visual:.1%}){mean}" if visual else "no visual tokens"
