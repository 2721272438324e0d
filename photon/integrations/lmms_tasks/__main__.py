"""python -m photon.integrations.lmms_tasks OUT --records BENCHMARK=RECORDS.jsonl [...]: lmms-eval task files."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from photon.core.errors import PhotonError
from photon.integrations.lmms_tasks import HERE, TASKS


def flatten_records(records: Path, benchmark: str, out: Path) -> tuple[int, int]:
    """Records -> one flat JSON object per line (what a datasets `json` table holds without
    guessing a schema from varying meta fields); media paths made absolute. Returns (written,
    left out as bad)."""
    from photon.modalities.dataset import PhotonDataset

    dataset = PhotonDataset(records, report=lambda text: print(text, file=sys.stderr))
    rows = []
    for entry in dataset.entries:
        if entry.benchmark not in (None, benchmark):
            raise PhotonError(f"{records}: record {entry.id} is for {entry.benchmark}, not {benchmark}")
        users = [m["content"] for m in entry.messages if m["role"] == "user"]
        answers = [m["content"] for m in entry.messages if m["role"] == "assistant"]
        rows.append({
            "id": entry.id,
            "benchmark": benchmark,
            "question": users[-1] if users else "",
            "answer": answers[-1] if answers else "",
            "media": [str(path.resolve()) for _, path in entry.media],
            "meta_json": json.dumps(entry.meta, ensure_ascii=False),
        })
    if not rows:
        raise PhotonError(f"{records}: no usable records")
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return len(rows), len(dataset.problems)


def write_tasks(out: Path, records: dict[str, Path]) -> tuple[Path, int]:
    """The task files for each benchmark's records; returns (folder, records left out as bad)."""
    unknown = sorted(set(records) - set(TASKS))
    if unknown:
        raise PhotonError(f"--records: unknown benchmark(s) {', '.join(unknown)}; these tasks: {', '.join(TASKS)} "
                          "(SLAKE and NExT-QA: use lmms-eval's own slake and nextqa tasks)")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "utils.py", out / "utils.py")
    left_out = 0
    for benchmark, path in records.items():
        if not Path(path).is_file():
            raise PhotonError(f"--records {benchmark}={path}: no such records file")
        flat = out / f"{TASKS[benchmark]}.jsonl"
        count, bad = flatten_records(Path(path), benchmark, flat)
        left_out += bad
        template = (HERE / f"{TASKS[benchmark]}.yaml").read_text()
        (out / f"{TASKS[benchmark]}.yaml").write_text(template.replace("RECORDS_FILE", str(flat.resolve())))
        print(f"{TASKS[benchmark]}: {count} records -> {out / (TASKS[benchmark] + '.yaml')}"
              + (f" ({bad} bad records left out)" if bad else ""), file=sys.stderr)
    return out, left_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m photon.integrations.lmms_tasks", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for the task files (give it to lmms-eval's --include_path)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="exit 0 even when bad records were left out of a task (by default the exit status is 1)")
    parser.add_argument("--records", action="append", default=[], metavar="BENCHMARK=FILE",
                        help=f"records written by photon convert, per benchmark ({', '.join(TASKS)}); repeatable")
    args = parser.parse_args(argv)
    try:
        pairs = dict(item.split("=", 1) for item in args.records)
    except ValueError:
        print(f"--records takes BENCHMARK=FILE, got {args.records}", file=sys.stderr)
        return 2
    if not pairs:
        print("give at least one --records BENCHMARK=FILE", file=sys.stderr)
        return 2
    try:
        folder, left_out = write_tasks(Path(args.out), {k: Path(v) for k, v in pairs.items()})
    except PhotonError as exc:
        print(f"lmms_tasks: error: {exc}", file=sys.stderr)
        return 2
    print(folder)
    if left_out and not args.allow_missing:
        print(f"lmms_tasks: {left_out} bad record(s) left out of the tasks (named above); --allow-missing exits 0",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
