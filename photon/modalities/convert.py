"""`photon convert`: the five benchmarks' published files -> records (docs/records.md).

Each converter reads one benchmark's files as published and yields records, or Skip for
a row it cannot use (missing media, malformed fields), which `convert` reports and counts
(or stops on, with strict). Prompt formats are documented per benchmark in docs/data.md.
Multiple-choice prompts share one layout, and their reference answer is the option letter.
"""

from __future__ import annotations

import csv
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from photon.core.errors import PhotonError
from photon.core.files import write_atomically
from photon.modalities.volumes import is_nifti, strip_volume_suffix

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Skip:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class ConvertOutcome:
    written: int = 0
    skipped: int = 0

    def __str__(self) -> str:
        return f"{self.written} records written, {self.skipped} skipped"


Converter = Callable[..., Iterator["dict | Skip"]]
CONVERTERS: dict[str, Converter] = {}


def converter(name: str):
    def add(function: Converter) -> Converter:
        CONVERTERS[name] = function
        return function

    return add


def convert(benchmark: str, src: str | Path, out: str | Path, *, strict: bool = False, progress: bool = True,
            report: Callable[[str], None] = print, **options) -> ConvertOutcome:
    """Write OUT (JSONL, atomically) from a benchmark's published files; unset options are dropped."""
    if benchmark not in CONVERTERS:
        raise PhotonError(f"unknown benchmark {benchmark!r}; known: {', '.join(sorted(CONVERTERS))}")
    function = CONVERTERS[benchmark]
    accepted = [p for p in inspect.signature(function).parameters if p not in ("src", "out")]
    options = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(options) - set(accepted))
    if extra:
        raise PhotonError(f"{benchmark}: option(s) {', '.join(extra)} do not apply; its options: {', '.join(accepted) or 'none'}")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise PhotonError(f"{src}: no such file or folder")
    from tqdm import tqdm

    outcome, records, seen = ConvertOutcome(), [], set()
    for item in tqdm(function(src, out, **options), desc=benchmark, unit="record", disable=not progress):
        if isinstance(item, dict) and item["id"] in seen:
            item = Skip(f"record {item['id']}", "duplicate id; the first one is kept")
        if isinstance(item, Skip):
            if strict:
                raise PhotonError(f"{item} (strict: stopping)")
            outcome.skipped += 1
            report(f"skipped {item}")
            continue
        seen.add(item["id"])
        records.append(anchor_media(item, out))
    write_atomically(out, lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records), mode="w")
    outcome.written = len(records)
    return outcome


def anchor_media(item: dict[str, Any], out: Path) -> dict[str, Any]:
    """Media paths the reader resolves from any working folder: relative to the records file's
    folder when the media lie under it (the set moves as one folder), absolute otherwise. The
    converters name files as found from the current folder."""
    base = out.resolve().parent
    for key in ("images", "videos"):
        if key in item:
            anchored = []
            for path in item[key]:
                resolved = Path(path).resolve()
                anchored.append(resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(resolved))
            item[key] = anchored
    return item


def record(id: str, benchmark: str, prompt: str, answer: str, meta: dict[str, Any], *,
           images: list[str] = (), videos: list[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"id": id, "benchmark": benchmark,
                           "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
    if images:
        out["images"] = list(images)
    if videos:
        out["videos"] = list(videos)
    out["meta"] = meta
    return out


def mc_prompt(question: str, choices: list[str]) -> str:
    options = "\n".join(f"{LETTERS[n]}. {choice}" for n, choice in enumerate(choices))
    return f"{question}\nOptions:\n{options}\n{MC_INSTRUCTION}"


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PhotonError(f"{path}: cannot read it as CSV ({exc})") from exc


def index_volumes(root: Path) -> dict[str, list[Path]]:
    """Volume files under `root` by name without extension (one walk, then dictionary lookups)."""
    if not root.is_dir():
        raise PhotonError(f"{root}: the volumes folder does not exist")
    index: dict[str, list[Path]] = {}
    for path in root.rglob("*"):
        if is_nifti(path):
            index.setdefault(strip_volume_suffix(path.name), []).append(path)
    return index


# --- 3D-RAD ---------------------------------------------------------------------------

THREE_D_RAD_COLUMNS = ("Task", "Subtask", "VolumeName", "Question", "Answer", "QuestionType", "AnswerChoice",
                       "Choice A", "Choice B", "Choice C", "Choice D")
# The shipped directory numbers swap tasks 1 and 2 relative to the paper, so the paper's task
# is read from the subtask file when its name is unique, else from the directory's words.
THREE_D_RAD_TASK_BY_SUBTASK = {
    "anatomical_observation": "image_observation", "pathological_observation": "image_observation",
    "abnormality_feature": "anomaly_detection", "abnormality_position": "anomaly_detection",
    "abnormality_type": "anomaly_detection", "diagnosis": "anomaly_detection",
    "diameter": "medical_computation", "size": "medical_computation", "thickness": "medical_computation",
}


def three_d_rad_task(task_dir: str, subtask: str) -> str:
    return THREE_D_RAD_TASK_BY_SUBTASK.get(subtask.lower()) or re.sub(r"^task\d*_", "", task_dir.lower()).replace(" ", "_")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@converter("3d-rad")
def convert_3d_rad(src: Path, out: Path, *, volumes: str | None = None, split: str = "test") -> Iterator[dict | Skip]:
    """SRC: the 3DRAD folder (holding train/ and test/) or one split folder; volumes: a CT-RATE root."""
    if volumes is None:
        raise PhotonError("3d-rad needs --volumes: the CT-RATE folder holding the volumes the CSVs name")
    if any(src.glob("Task*/*.csv")):
        split_dirs = [src]
    else:
        split_dirs = sorted(p for p in src.iterdir() if p.is_dir() and any(p.glob("Task*/*.csv")))
        if split != "all":
            split_dirs = [p for p in split_dirs if p.name == split]
    if not split_dirs:
        raise PhotonError(f"{src}: no Task*/<subtask>.csv files for split {split!r}; expected the 3DRAD folder as published")
    index = index_volumes(Path(volumes))
    for split_dir in split_dirs:
        for table in sorted(split_dir.glob("Task*/*.csv")):
            columns, rows = read_csv_rows(table)
            missing = [c for c in THREE_D_RAD_COLUMNS if c not in columns]
            if missing:
                yield Skip(str(table), f"missing columns {', '.join(missing)}; expected {','.join(THREE_D_RAD_COLUMNS)}")
                continue
            task = three_d_rad_task(table.parent.name, table.stem)
            for n, row in enumerate(rows):
                yield _three_d_rad_record(row, n, f"{table}:{n + 2}", split_dir.name, task, table, index)


def _three_d_rad_record(row, n, where, split, task, table, index) -> dict | Skip:
    name = strip_volume_suffix(row["VolumeName"].strip())
    candidates = [name] + (["valid_" + name[len("test_"):]] if name.startswith("test_") else [])
    found = next((index[c] for c in candidates if c in index), None)
    if found is None:
        return Skip(where, f"volume {row['VolumeName']} not found under --volumes (also tried {', '.join(candidates[1:]) or 'nothing else'})")
    if len(found) > 1:
        return Skip(where, f"volume {row['VolumeName']} matches several files ({', '.join(map(str, found[:3]))}); point --volumes at one copy")
    kind = row["QuestionType"].strip().lower()
    question, answer = row["Question"].strip(), row["Answer"].strip()
    meta: dict[str, Any] = {"task": task, "task_dir": table.parent.name, "subtask": table.stem,
                            "question_type": kind, "volume": row["VolumeName"].strip(), "answer": answer}
    if kind == "open":
        prompt, reference = f"<video>{question}", answer
    elif kind == "close":
        choices = {letter: row[f"Choice {letter}"].strip() for letter in "ABCD" if row[f"Choice {letter}"].strip() not in ("", "-")}
        letter = row["AnswerChoice"].strip().upper()
        if letter not in choices or list(choices) != list("ABCD"[: len(choices)]):
            return Skip(where, f"AnswerChoice {letter!r} is not one of the options {', '.join(choices)}")
        meta.update(choices=choices, answer_letter=letter)
        prompt, reference = "<video>" + mc_prompt(question, list(choices.values())), letter
    else:
        return Skip(where, f"QuestionType {row['QuestionType']!r}; expected Open or Close")
    record_id = f"3d-rad/{split}/{task}/{slug(table.stem)}/{n:06d}"
    return record(record_id, "3d-rad", prompt, reference, meta, videos=[str(found[0])])


# --- DeepTumorVQA ---------------------------------------------------------------------

def _rows_of(path: Path) -> list[dict[str, Any]]:
    """QA rows from a JSON list, a {"questions": [...]} object, JSONL or CSV, keys in snake_case."""
    try:
        if path.suffix.lower() == ".csv":
            rows = read_csv_rows(path)[1]
        elif path.suffix.lower() == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            rows = json.loads(path.read_text(encoding="utf-8"))
            rows = rows.get("questions", rows) if isinstance(rows, dict) else rows
    except (OSError, ValueError) as exc:
        raise PhotonError(f"{path}: cannot read its QA records ({exc})") from exc
    if not isinstance(rows, list):
        raise PhotonError(f"{path}: expected a list of QA records (or {{\"questions\": [...]}})")
    return [{re.sub(r"\s+", "_", str(k).strip().lower()): v for k, v in row.items()} for row in rows if isinstance(row, dict)]


def parse_choices(mc_question: str) -> dict[str, str]:
    """Options written inline as 'A: text' / 'A. text' / '(A) text'; empty unless A, B, ... appear in order."""
    marks = list(re.finditer(r"(?:^|\s)\(?([A-J])[:.)]\s+", mc_question))
    letters = [m.group(1) for m in marks]
    if not letters or letters != list(LETTERS[: len(letters)]):
        return {}
    ends = [m.start() for m in marks[1:]] + [len(mc_question)]
    return {m.group(1): mc_question[m.end():end].strip() for m, end in zip(marks, ends)}


def answer_kind(answer: str) -> str:
    text = str(answer).strip().lower().rstrip(".")
    if text in ("yes", "no"):
        return "binary"
    try:
        float(text.replace(",", ""))
        return "numeric"
    except ValueError:
        return "categorical"


FREE_HINTS = {"numeric": "Answer with a single number.", "binary": "Answer yes or no.",
              "categorical": "Answer with a short phrase."}


def _find_ct(root: Path, image_id: str) -> Path | None:
    for candidate in (root / image_id / "ct.nii.gz", root / f"{image_id}.nii.gz", root / image_id / "ct.nii", root / f"{image_id}.nii"):
        if candidate.is_file():
            return candidate
    return None


@converter("deeptumorvqa")
def convert_deeptumorvqa(src: Path, out: Path, *, volumes: str | None = None, format: str = "mc",
                         version: int | None = None) -> Iterator[dict | Skip]:
    """SRC: a QA file (v1 or v2: JSON, JSONL, CSV) or v2's benchmark folder; volumes: <root>/<image_id>/ct.nii.gz."""
    if format not in ("mc", "free", "both"):
        raise PhotonError(f"deeptumorvqa: format {format!r} must be mc, free or both")
    qa_file = src
    if src.is_dir():
        qa_file = next((src / name for name in ("test_qa.json", "test_qa.jsonl") if (src / name).is_file()), None)
        if qa_file is None:
            raise PhotonError(f"{src}: no test_qa.json or test_qa.jsonl; pass the QA file itself")
    root = Path(volumes) if volumes else qa_file.parent / "ct"
    if not root.is_dir():
        raise PhotonError(f"{root}: no such volumes folder; pass --volumes (the folder holding <image_id>/ct.nii.gz)")
    formats = ("mc", "free") if format == "both" else (format,)
    for n, row in enumerate(_rows_of(qa_file)):
        where = f"{qa_file}[{n}]"
        v = version or (2 if "mc_question" in row or "qid" in row else 1)
        qid = row.get("qid") or row.get("question_id")
        image_id = str(row.get("image_id") or "").strip()
        mc_question = row.get("mc_question") or row.get("multiple_choice_question") or ""
        if not qid or not image_id or not row.get("question"):
            yield Skip(where, "needs a question id, image_id and question")
            continue
        volume = _find_ct(root, image_id)
        if volume is None:
            yield Skip(where, f"no CT for {image_id} under {root} (tried <id>/ct.nii.gz and <id>.nii.gz)")
            continue
        answer, letter = str(row.get("answer", "")).strip(), str(row.get("correct_option", "")).strip().upper()
        meta = {"version": v, "qid": str(qid), "image_id": image_id,
                "question_type": str(row.get("question_type", "")).replace("_", " ").lower(),
                "question_subtype": str(row.get("question_subtype", "")).replace("_", " ").lower(),
                "answer": answer, "correct_option": letter, "organ": row.get("organ"), "lesion": row.get("lesion")}
        for fmt in formats:
            if fmt == "mc":
                if not mc_question or letter not in ("A", "B", "C", "D"):
                    yield Skip(where, f"no multiple-choice question or correct_option {letter!r} is not A-D")
                    continue
                choices = parse_choices(mc_question)
                prompt, reference = f"<video>{mc_question.strip()}\n{MC_INSTRUCTION}", letter
                extra = {"format": "mc", "answer_kind": "mc", **({"choices": choices} if choices else {})}
            else:
                kind = answer_kind(answer)
                prompt, reference = f"<video>{row['question'].strip()}\n{FREE_HINTS[kind]}", answer
                extra = {"format": "free", "answer_kind": kind}
            yield record(f"deeptumorvqa/v{v}/{qid}/{fmt}", "deeptumorvqa", prompt, reference, {**meta, **extra}, videos=[str(volume)])


# --- SLAKE ----------------------------------------------------------------------------

@converter("slake")
def convert_slake(src: Path, out: Path, *, split: str = "test", lang: str = "en") -> Iterator[dict | Skip]:
    """SRC: the SLAKE folder (train.json, validation.json or validate.json, test.json, imgs/) or one JSON file."""
    if lang not in ("en", "zh", "all"):
        raise PhotonError(f"slake: lang {lang!r} must be en, zh or all")
    if src.is_file():
        qa_file, root = src, src.parent
    else:
        names = ("validation.json", "validate.json") if split in ("validation", "validate") else (f"{split}.json",)
        qa_file, root = next((src / n for n in names if (src / n).is_file()), None), src
        if qa_file is None:
            raise PhotonError(f"{src}: no {' or '.join(names)}; expected the SLAKE folder as published")
    split_name = "validation" if qa_file.stem == "validate" else qa_file.stem  # the same ids whatever a copy calls the file
    for n, row in enumerate(_rows_of(qa_file)):
        where = f"{qa_file}[{n}]"
        if lang != "all" and row.get("q_lang") != lang:
            continue
        if not row.get("img_name") or not row.get("question") or row.get("qid") is None:
            yield Skip(where, "needs img_name, question and qid")
            continue
        image = root / "imgs" / row["img_name"]
        if not image.is_file():
            yield Skip(where, f"image {image} not found")
            continue
        answer = str(row.get("answer", "")).strip()
        meta = {"qid": row["qid"], "img_name": row["img_name"], "answer_type": row.get("answer_type"), "answer": answer,
                "modality": row.get("modality"), "location": row.get("location"),
                "content_type": row.get("content_type"), "base_type": row.get("base_type"), "lang": row.get("q_lang")}
        yield record(f"slake/{split_name}/{row['qid']}", "slake", f"<image>{row['question'].strip()}", answer, meta, images=[str(image)])


# --- NExT-QA --------------------------------------------------------------------------

NEXTQA_COLUMNS = ("video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4")


@converter("nextqa")
def convert_nextqa(src: Path, out: Path, *, videos: str | None = None, video_map: str | None = None) -> Iterator[dict | Skip]:
    """SRC: a NExT-QA multiple-choice CSV; videos: the folder holding NExTVideo/<dir>/<video>.mp4."""
    if videos is None:
        raise PhotonError("nextqa needs --videos: the folder holding the NExT-QA mp4 files")
    video_root = Path(videos)
    if (video_root / "NExTVideo").is_dir():
        video_root = video_root / "NExTVideo"
    map_candidates = [Path(video_map)] if video_map else [src.parent / "map_vid_vidorID.json", Path(videos) / "map_vid_vidorID.json",
                                                          video_root.parent / "map_vid_vidorID.json"]
    map_file = next((p for p in map_candidates if p.is_file()), None)
    if map_file is None:
        raise PhotonError(f"no map_vid_vidorID.json in {', '.join(str(p.parent) for p in map_candidates)}; pass --map")
    try:
        mapping = {str(k): v for k, v in json.loads(map_file.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise PhotonError(f"{map_file}: expected a JSON object video -> <dir>/<video> ({exc})") from exc
    columns, rows = read_csv_rows(src)
    missing = [c for c in NEXTQA_COLUMNS if c not in columns]
    if missing:
        raise PhotonError(f"{src}: missing columns {', '.join(missing)}; expected NExT-QA's multiple-choice CSV")
    for n, row in enumerate(rows):
        where = f"{src}:{n + 2}"
        video = row["video"].strip()
        if video not in mapping:
            yield Skip(where, f"video {video} is not in {map_file}")
            continue
        path = video_root / f"{mapping[video]}.mp4"
        if not path.is_file():
            yield Skip(where, f"video file {path} not found")
            continue
        choices = [row[f"a{k}"].strip() for k in range(5)]
        answer = row["answer"].strip()
        if answer not in ("0", "1", "2", "3", "4") or not all(choices):
            yield Skip(where, f"answer {answer!r} must be 0-4 with five non-empty options a0..a4")
            continue
        answer = int(answer)
        question = row["question"].strip()
        question = question if question.endswith(("?", ".")) else question + "?"
        meta = {"video": video, "qid": row["qid"], "type": row["type"].strip(), "choices": choices,
                "answer_index": answer, "answer_letter": LETTERS[answer]}
        yield record(f"nextqa/{src.stem}/{video}_{row['qid']}", "nextqa", "<video>" + mc_prompt(question, choices),
                     LETTERS[answer], meta, videos=[str(path)])


# --- MedFrameQA -----------------------------------------------------------------------

def _image_suffix(data: bytes, name: str | None) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    suffix = Path(name or "").suffix.lower()
    return suffix if suffix else ".png"


@converter("medframeqa")
def convert_medframeqa(src: Path, out: Path, *, media_dir: str | None = None) -> Iterator[dict | Skip]:
    """SRC: a MedFrameQA parquet file or a folder of them. Frames are written to media_dir (default OUT_frames/)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise PhotonError("medframeqa reads parquet through pyarrow: pip install 'photon[eval]'") from exc
    files = sorted(src.rglob("*.parquet")) if src.is_dir() else [src]
    if not files:
        raise PhotonError(f"{src}: no .parquet files")
    frames_dir = Path(media_dir) if media_dir else out.parent / f"{out.stem}_frames"
    for file in files:
        try:
            batches = pq.ParquetFile(file).iter_batches(batch_size=32)
        except Exception as exc:
            raise PhotonError(f"{file}: not a readable parquet file ({exc})") from exc
        columns = set(pq.ParquetFile(file).schema_arrow.names)
        missing = [need for need in MEDFRAMEQA_COLUMNS if not any(name in columns for name in need.split("|"))]
        if missing:
            raise PhotonError(
                f"{file}: not a MedFrameQA table: no {', '.join(m.replace('|', ' or ') for m in missing)} column(s); "
                f"it has {', '.join(sorted(columns))}"
            )
        n = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield _medframeqa_record(row, f"{file}[{n}]", frames_dir)
                n += 1


# Both published layouts: frames in image_1..image_5 or as one `image` list, the letter in
# correct_answer or answer.
MEDFRAMEQA_COLUMNS = ("question_id", "question", "options", "correct_answer|answer", "image_1|image|images")


def _medframeqa_images(row: dict) -> list:
    listed = row.get("image") if row.get("image") is not None else row.get("images")
    if isinstance(listed, list):
        return listed[:5]
    return [row.get(f"image_{k}") for k in range(1, 6)]


def _medframeqa_record(row: dict, where: str, frames_dir: Path) -> dict | Skip:
    qid = row.get("question_id")
    options = row.get("options")
    letter = str(row.get("correct_answer") or row.get("answer") or "").strip().upper()
    if qid is None or not row.get("question") or not isinstance(options, list) or not options:
        return Skip(where, "needs question_id, question and a list of options")
    if len(letter) != 1 or letter not in LETTERS[: len(options)]:
        return Skip(where, f"the answer letter {letter!r} is not one of the {len(options)} options' letters")
    paths = []
    for k, image in enumerate(_medframeqa_images(row), start=1):
        data = image.get("bytes") if isinstance(image, dict) else image
        if not data:
            continue
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(qid))
        path = frames_dir / f"{name}_{k}{_image_suffix(data, image.get('path') if isinstance(image, dict) else None)}"
        if not (path.is_file() and path.stat().st_size == len(data)):
            write_atomically(path, lambda f, data=data: f.write(data))
        paths.append(str(path))
    if not paths:
        return Skip(where, "no frames (image_1..image_5, or the image list, are empty)")
    choices = [str(o) for o in options]
    meta = {"question_id": str(qid), "system": row.get("system"), "organ": row.get("organ"), "keyword": row.get("keyword"),
            "modality": row.get("modality"), "n_frames": len(paths), "choices": choices, "answer_letter": letter}
    prompt = "<image>" * len(paths) + mc_prompt(str(row["question"]).strip(), choices)
    return record(f"medframeqa/{qid}", "medframeqa", prompt, letter, meta, images=paths)
