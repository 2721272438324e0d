"""`photon infer` under torchrun: records sharded across ranks, part files merged in input order,
each record answered once, the same predictions as one process, and resumable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from photon.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
N_RECORDS = 7


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dp")
    rng = np.random.default_rng(3)
    rows = []
    for i in range(N_RECORDS):
        volume = rng.normal(-500, 100, (24, 40, 40)).astype(np.float32)
        volume[4 + 2 * i: 10 + 2 * i, 5:20, 5 + 2 * i: 20 + 2 * i] += 1200
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(folder / f"ct{i}.nii.gz"))
        rows.append({"id": f"case{i}", "videos": [f"ct{i}.nii.gz"],
                     "messages": [{"role": "user", "content": f"<video>Where is the bright block {i}?"},
                                  {"role": "assistant", "content": "left"}]})
    path = folder / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ARGS = ["--backbone", "qwen2.5-vl-tiny", "--batch-size", "2", "--media", "ct.preprocess=false", "--media", "ct.size=[28,56,56]",
        "--max-new-tokens", "3"]


def torchrun(records, out, *extra, nproc=2):
    from photon.training.distributed import free_port

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
               "-m", "photon", "infer", "--data", str(records), "--out", str(out), *ARGS, *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=out.parent)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def essentials(rows):
    return [(r["id"], r["answer"], r["n_kept"], r["n_visual"]) for r in rows]


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes_and_resume(records, tmp_path, capsys):
    single = tmp_path / "single.jsonl"
    assert main(["infer", "--data", str(records), "--out", str(single), "--no-progress", *ARGS]) == 0
    capsys.readouterr()
    multi = tmp_path / "multi.jsonl"
    done = torchrun(records, multi)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = lines(single), lines(multi)
    assert len(two) == N_RECORDS and len({r["id"] for r in two}) == N_RECORDS  # each record once
    assert essentials(two) == essentials(one)  # same ids, order, answers and kept counts
    for a, b in zip(one, two):
        assert a["theta"] == pytest.approx(b["theta"], abs=1e-5)
    assert not list(tmp_path.glob(".multi.jsonl.part-*"))  # parts merged and removed
    assert "rank 0:" in done.stderr and "rank 1:" in done.stderr and "records/s" in done.stderr
    assert f"wrote {N_RECORDS} predictions" in done.stderr  # the run's total, not rank 0's share
    assert "kept " in done.stderr and "visual tokens" in done.stderr

    # Interrupted: rank 0 had answered its first record and was cutting its second line; rank 1 nothing.
    resumed = tmp_path / "resumed.jsonl"
    part0 = tmp_path / ".resumed.jsonl.part-0-of-2"
    first = json.dumps(one[0]) + "\n"
    part0.write_text(first + json.dumps(one[2])[:40])
    done = torchrun(records, resumed)
    assert done.returncode == 0, done.stderr[-3000:]
    again = lines(resumed)
    assert essentials(again) == essentials(one)
    assert json.dumps(again[0]) == first.strip()  # kept from the interrupted run, not answered again
    assert "resuming, 1 records already predicted" in done.stderr and "cut short" in done.stderr
    assert f"wrote {N_RECORDS - 1} predictions" in done.stderr and "(1 already there" in done.stderr


def test_the_deepspeed_launchers_local_rank_argument_is_accepted():
    args = build_parser().parse_args(["infer", "--data", "r.jsonl", "--out", "p.jsonl", "--backbone", "qwen2.5-vl-tiny",
                                      "--local_rank=1"])
    assert args.local_rank == 1
