"""ms-swift JSON/JSONL records -> Samples (loaded media) -> encoded batches.

The record format is docs/records.md. Tags: `<image>` and `<video>` are consumed in order
across the messages; when a record has more media than tags, the missing tags go to the
start of the first user message (images first, then videos in front of them, as ms-swift
does); more tags than media is an error naming the record.

Tokenisation, label masking (labels only on assistant tokens) and the instruction mask
belong to the backbone: a SampleEncoder turns a Sample into tensors and a list of those
into a batch. Without an encoder the dataset yields Samples.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch
from torch.utils.data import Dataset

from photon.core.errors import PhotonError
from photon.modalities.base import Media, choose_loader
from photon.modalities.cache import MediaCache
from photon.modalities.monai_bridge import is_metatensor, media_from_metatensor
from photon.modalities.config import DataConfig

TAGS = {"<image>": "images", "<video>": "videos"}
TAG_PATTERN = re.compile("|".join(TAGS))
ROLES = ("system", "user", "assistant", "tool")
# A hint for choose_modality per media field: a `videos` entry may be a video or a volume.
KIND_OF_FIELD = {"images": "image", "videos": None}


@dataclass
class Sample:
    id: str
    messages: list[dict[str, str]]  # tags normalised: exactly one tag per media item, in order
    media: list[Media]  # in tag order
    meta: dict[str, Any] = field(default_factory=dict)
    benchmark: str | None = None
    where: str = ""  # FILE:LINE of the record, for messages


class SampleEncoder(Protocol):
    def encode(self, sample: Sample, *, train: bool) -> dict[str, torch.Tensor]: ...  # per-sample tensors

    def collate(self, encoded: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class Problem:
    """A record that was skipped, and why."""

    where: str
    id: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: record {self.id or '?'}: {self.reason}"


@dataclass(frozen=True)
class Entry:
    """A record that passed the checks: media paths resolved, tags normalised."""

    id: str
    messages: list[dict[str, str]]
    media: list[tuple[str, Path]]  # (field, path) in tag order
    meta: dict[str, Any]
    benchmark: str | None
    where: str


class RecordError(PhotonError):
    pass


def iter_records(source: str | Path | Iterable[dict]) -> Iterator[tuple[str, dict | Problem]]:
    """(where, record) for each record of a JSONL file, a JSON list or an iterable; bad JSON is a Problem."""
    if not isinstance(source, (str, Path)):
        for n, record in enumerate(source):
            yield f"<records>[{n}]", record
        return
    path = Path(source)
    if not path.is_file():
        raise PhotonError(f"{path}: no such records file")
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise PhotonError(f"{path}: not valid JSON ({exc}); expected a list of records (or use .jsonl)") from exc
        if not isinstance(records, list):
            raise PhotonError(f"{path}: holds a {type(records).__name__}; expected a JSON list of records")
        for n, record in enumerate(records):
            yield f"{path}[{n}]", record
        return
    with open(path, encoding="utf-8") as lines:
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line)
            except ValueError as exc:
                yield f"{path}:{n}", Problem(f"{path}:{n}", None, f"not valid JSON ({exc})")


def normalise_messages(record: dict) -> list[dict[str, str]]:
    """Copy the messages with missing tags inserted; raise RecordError when they cannot match the media."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError("`messages` must be a non-empty list of {role, content}")
    copied = []
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise RecordError(f"messages[{n}] must be {{role: one of {', '.join(ROLES)}, content: text}}, got {message!r:.80}")
        copied.append({"role": message["role"], "content": message["content"]})
    text = "\n".join(m["content"] for m in copied)
    for tag, key in TAGS.items():
        count, tags = len(media_list(record, key)), text.count(tag)
        if tags > count:
            raise RecordError(f"{tags} {tag} tags but {count} {key}; each tag needs one item in `{key}`")
        if tags < count:
            first_user = next((m for m in copied if m["role"] == "user"), None)
            if first_user is None:
                raise RecordError(f"has {key} but no user message to put their tags in")
            first_user["content"] = tag * (count - tags) + first_user["content"]
    return copied


def media_list(record: dict, key: str) -> list[Any]:
    """A record's file paths under `key`; records built in Python may also hold MONAI MetaTensors."""
    value = record.get(key)
    if value is None or (isinstance(value, (list, str)) and not value):
        return []
    value = [value] if isinstance(value, str) or is_metatensor(value) else value
    if not isinstance(value, list) or not all((isinstance(v, str) and v) or is_metatensor(v) for v in value):
        raise RecordError(f"`{key}` must be a list of file paths, got {value!r:.80}")
    return value


def parse_record(record: Any, where: str, media_root: Path | None) -> Entry:
    """Check one record and resolve its media in tag order; raise RecordError saying what is wrong."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    messages = normalise_messages(record)
    queues = {key: list(media_list(record, key)) for key in TAGS.values()}
    media = []
    for message in messages:
        for tag in TAG_PATTERN.findall(message["content"]):
            key = TAGS[tag]
            item = queues[key].pop(0)
            if is_metatensor(item):  # an in-memory volume: its affine is its geometry
                media.append((key, item))
                continue
            path = Path(item).expanduser()
            if not path.is_absolute() and media_root is not None:
                path = media_root / path
            if not path.exists():
                raise RecordError(f"missing media path {path} (in `{key}`)")
            media.append((key, path))
    meta = record.get("meta") or {}
    if not isinstance(meta, dict):
        raise RecordError("`meta` must be an object")
    return Entry(str(record.get("id") or anonymous_id(where)), messages, media, meta, record.get("benchmark"), where)


def anonymous_id(where: str) -> str:
    """The id of a record that has none: its file's name and line (train.jsonl:3), so a rerun that
    spells the records path differently (relative, absolute) finds the same ids."""
    return Path(where).name


def print_problem(text: str) -> None:
    """To stderr, without breaking a progress bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


class PhotonDataset(Dataset):
    """Records -> Samples (no encoder) or the encoder's per-sample tensors.

    Records with bad structure, duplicate ids or missing media paths are reported
    (FILE:LINE, id, reason) and skipped when the dataset is built; media that fail to load
    are reported and come back as None, which `collate` drops. With strict=True the first
    problem raises PhotonError instead. `summary()` gives the counts.
    """

    def __init__(
        self,
        path_or_records: str | Path | Iterable[dict],
        encoder: SampleEncoder | None = None,
        cache_dir: str | Path | None = None,
        strict: bool = False,
        *,
        data: DataConfig | None = None,
        media_options: dict[str, dict[str, Any]] | None = None,
        train: bool = True,
        report: Callable[[str], None] = print_problem,
    ):
        self.data = data or DataConfig()
        self.encoder = encoder
        self.strict = strict
        self.train = train
        self.report = report
        self.media_options = {name: dataclasses.asdict(getattr(self.data, name)) for name in ("ct", "frames", "video")}
        for name, options in (media_options or {}).items():
            self.media_options[name] = {**self.media_options.get(name, {}), **options}
        cache_dir = cache_dir or self.data.cache_dir
        self.cache = MediaCache(cache_dir, self.data.cache_dtype) if cache_dir else None
        self.problems: list[Problem] = []
        self.entries: list[Entry] = []
        self.failed: set[int] = set()  # entries whose media failed to load
        media_root = Path(self.data.media_root) if self.data.media_root else (
            Path(path_or_records).resolve().parent if isinstance(path_or_records, (str, Path)) else None)
        seen: dict[str, str] = {}
        for where, record in iter_records(path_or_records):
            if isinstance(record, Problem):
                self.skip(record)
                continue
            try:
                entry = parse_record(record, where, media_root)
            except RecordError as exc:
                self.skip(Problem(where, record.get("id") if isinstance(record, dict) else None, str(exc)))
                continue
            if entry.id in seen:
                self.skip(Problem(where, entry.id, f"duplicate id (first at {seen[entry.id]})"))
                continue
            seen[entry.id] = where
            self.entries.append(entry)

    def skip(self, problem: Problem) -> None:
        if self.strict:
            raise PhotonError(f"{problem} (strict: stopping)")
        self.problems.append(problem)
        self.report(f"skipped {problem}")

    def __len__(self) -> int:
        return len(self.entries)

    def load_sample(self, index: int) -> Sample:
        entry = self.entries[index]
        media = []
        for key, path in entry.media:
            if is_metatensor(path):
                media.append(media_from_metatensor(path, **self.media_options.get("ct", {})))
                continue
            name, loader = choose_loader(path, KIND_OF_FIELD[key])
            options = self.media_options.get(name, {})
            media.append(self.cache.load(path, name, options, loader) if self.cache else loader(path, **options))
        return Sample(entry.id, [dict(m) for m in entry.messages], media, dict(entry.meta), entry.benchmark, entry.where)

    def __getitem__(self, index: int):
        entry = self.entries[index]
        try:
            sample = self.load_sample(index)
            return self.encoder.encode(sample, train=self.train) if self.encoder else sample
        except PhotonError as exc:
            if index not in self.failed or self.strict:  # report once, however many epochs ask again
                self.skip(Problem(entry.where, entry.id, str(exc)))
            self.failed.add(index)
            return None

    def collate(self, batch: list) -> Any:
        """DataLoader collate_fn: drops skipped items; the encoder batches the rest (None if none are left)."""
        items = [item for item in batch if item is not None]
        if not items:
            return None
        return self.encoder.collate(items) if self.encoder else items

    def samples(self, progress: bool = True) -> Iterator[Any]:
        """One pass over every record (with a progress bar), skipping those that fail; then the summary."""
        from tqdm import tqdm

        for index in tqdm(range(len(self)), desc="records", unit="record", disable=not progress):
            item = self[index]
            if item is not None:
                yield item
        self.report(self.summary())

    def summary(self) -> str:
        return f"{len(self.entries) - len(self.failed)} records usable, {len(self.problems)} skipped"
