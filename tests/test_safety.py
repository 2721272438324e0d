"""Nothing damaged runs as if whole, nothing stale is reported as new (issue 30), as a user hits it:
a real short training run's checkpoint, hub and release folders in their owners' layouts
(tests/hub_layouts.py), prediction files resumed after their records changed, and the exit codes
and messages each front end gives."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import photon
from photon.cli import main
from photon.core.errors import PhotonError
from photon.opening import OpenRequest, check_request, resolve_source
from tests.hub_layouts import write_photon_release_folder, write_qwen2_5_hub_folder

ROOT = Path(__file__).resolve().parent.parent


def cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- a real training run's checkpoints ---------------------------------------------------------
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    pytest.importorskip("deepspeed", reason="the train extra (DeepSpeed) writes training checkpoints")
    from tests.test_training import config, write_records
    from photon.training.trainer import train

    folder = tmp_path_factory.mktemp("run")
    records = write_records(folder, n=2)
    cfg = config(folder, records, "run.max_steps=2", "run.save_every=1", "run.keep_last=2",
                 "photon.schedule.soft_start=0", "photon.schedule.hard_start=1")
    before = {key: os.environ.get(key) for key in ("RANK", "WORLD_SIZE", "MASTER_PORT", "DS_ACCELERATOR")}
    train(cfg)
    # the run put back the variables it set for itself: a later run or subprocess does not inherit its port
    assert {key: os.environ.get(key) for key in before} == before
    return Path(cfg.run.output_dir)


def copy_run(run_folder, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_folder, target, symlinks=True)
    return target


def test_a_step_folder_without_its_trained_head_is_refused_unless_the_backbone_alone_is_asked_for(run_folder, tmp_path, capsys):
    out = copy_run(run_folder, tmp_path)
    step = out / "checkpoints" / "step-00000002"
    (step / "photon.safetensors").unlink()
    code, _, err = cli(capsys, "attach", "--checkpoint", str(step), "--json")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "manifest.json" in err and "missing: photon.safetensors" in err
    # without a manifest (a `photon attach --save` folder), photon.yaml says a head belongs there
    (step / "manifest.json").unlink()
    with pytest.raises(PhotonError, match=r"no photon.safetensors, the trained Photon head .* --backbone-only"):
        photon.load(str(step))
    loaded = photon.load(str(step), backbone_only=True)
    assert loaded.model._photon.config.mode == "zero_shot"
    code, out_text, err = cli(capsys, "attach", "--checkpoint", str(step), "--backbone-only", "--json")
    assert code == 0 and json.loads(out_text)["mode"] == "zero_shot"


def test_weights_changed_after_the_step_was_written_are_refused_naming_the_file(run_folder, tmp_path, capsys):
    out = copy_run(run_folder, tmp_path)
    step = out / "checkpoints" / "step-00000002"
    weights = next(p for p in step.glob("model*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # 64 bytes of the last tensor zeroed: the header still parses
    weights.write_bytes(bytes(data))
    code, _, err = cli(capsys, "attach", "--checkpoint", str(step), "--json")
    assert code == 2 and f"changed: {weights.name}" in err and len(err.strip().splitlines()) == 1


def test_latest_naming_a_deleted_step_uses_the_newest_complete_one_and_says_so(run_folder, tmp_path, capsys):
    out = copy_run(run_folder, tmp_path)
    shutil.rmtree(out / "checkpoints" / "step-00000002")
    source = resolve_source(str(out / "checkpoints" / "latest"))
    assert source.folder == out / "checkpoints" / "step-00000001" and source.kind == "pointer"
    assert "names step-00000002, which is missing; using the newest complete checkpoint, step-00000001" in source.notes[0]
    code, out_text, err = cli(capsys, "attach", "--checkpoint", str(out), "--json")
    assert code == 0 and "using the newest complete checkpoint, step-00000001" in err
    assert json.loads(out_text)["mode"] == "trained"
    shutil.rmtree(out / "checkpoints" / "step-00000001")
    code, _, err = cli(capsys, "attach", "--checkpoint", str(out))
    assert code == 2 and "no other complete checkpoint" in err


def test_verified_digests_are_reused_while_files_are_unchanged(run_folder, tmp_path, monkeypatch):
    from photon.core import checkpoint, digests

    monkeypatch.setenv("PHOTON_CACHE", str(tmp_path / "cache"))
    step = copy_run(run_folder, tmp_path) / "checkpoints" / "step-00000002"
    read = []
    real = digests.sha256
    monkeypatch.setattr(digests, "sha256", lambda path: read.append(Path(path).name) or real(path))
    checkpoint.verify_manifest(step, skip=checkpoint.TRAINING_STATE)
    assert any(name.startswith("model") for name in read)
    read.clear()
    checkpoint.verify_manifest(step, skip=checkpoint.TRAINING_STATE)
    assert read == []  # every digest came from the cache
    (step / "photon.yaml").write_text((step / "photon.yaml").read_text() + "\n")
    with pytest.raises(PhotonError, match="changed: photon.yaml"):
        checkpoint.verify_manifest(step, skip=checkpoint.TRAINING_STATE)
    assert read == ["photon.yaml"]  # only the file whose size and time moved was read again


# -- hub and release folders ---------------------------------------------------------------------
def test_a_truncated_shard_is_one_line_naming_it(tmp_path, capsys):
    folder = tmp_path / "qwen"
    write_qwen2_5_hub_folder(folder)
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    code, _, err = cli(capsys, "attach", "--backbone", str(folder))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(shard) in err and "truncated or corrupt" in err
    shard.write_bytes(b"\xff" * 64)  # not even a header
    code, _, err = cli(capsys, "attach", "--backbone", str(folder))
    assert code == 2 and str(shard) in err and "Traceback" not in err


def test_a_release_folder_missing_a_predictor_tensor_is_one_line_even_when_mismatches_are_allowed(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    write_photon_release_folder(tmp_path, stage="S2")
    for shard in tmp_path.glob("*.safetensors"):
        tensors = load_file(str(shard))
        kept = {k: v for k, v in tensors.items() if not k.endswith("atp.predictor.mlp.2.bias")}
        if len(kept) != len(tensors):
            save_file(kept, str(shard), metadata={"format": "pt"})
    index = next(tmp_path.glob("*.index.json"), None)
    if index is not None:
        raw = json.loads(index.read_text())
        raw["weight_map"] = {k: v for k, v in raw["weight_map"].items() if not k.endswith("atp.predictor.mlp.2.bias")}
        index.write_text(json.dumps(raw))
    for extra in ([], ["--allow-weight-mismatch"]):
        code, _, err = cli(capsys, "attach", "--backbone", str(tmp_path), *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "threshold predictor is incomplete (missing predictor.mlp.2.bias" in err
    code, out_text, err = cli(capsys, "attach", "--backbone", str(tmp_path), "--backbone-only", "--json")
    assert code == 0 and json.loads(out_text)["mode"] == "zero_shot"


def test_a_missing_folder_and_an_uncached_hub_id_say_what_to_do(tmp_path, capsys, monkeypatch):
    code, _, err = cli(capsys, "attach", "--backbone", str(tmp_path / "not-here"))
    assert code == 2 and f"{tmp_path / 'not-here'}: no such file or folder" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    code, _, err = cli(capsys, "attach", "--backbone", "Someone/Missing-VL")
    assert code == 2 and "hf download Someone/Missing-VL" in err and "huggingface-cli" not in err


def test_every_source_kind_resolves_to_one_value(tmp_path):
    hub = tmp_path / "hub"
    write_qwen2_5_hub_folder(hub)
    release = tmp_path / "release"
    write_photon_release_folder(release, stage="S2")
    kinds = {"qwen2.5-vl-tiny": "alias", str(hub): "model_folder", str(release): "release_folder"}
    for text, kind in kinds.items():
        source = resolve_source(text)
        assert source.kind == kind and source.spec.model_type == "qwen2_5_vl"
    assert resolve_source(str(hub)).num_layers == 8


# -- one validation of the selection settings --------------------------------------------------------
@pytest.mark.parametrize("layer,message", [
    (2.5, "layer=2.5: expected a whole decoder-layer index (0-based), not a float"),
    (7, "layer=7: outside qwen2.5-vl-tiny's 8 decoder layers; choose -1..6"),
    (-2, "layer=-2: outside"),
])
def test_the_layer_rule_is_one_rule_in_every_front_end(layer, message, monkeypatch):
    import photon.opening as opening

    def no_loading(*_, **__):
        raise AssertionError("loaded before the settings were checked")

    monkeypatch.setattr(opening, "open_source", no_loading)
    with pytest.raises(PhotonError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        photon.load("qwen2.5-vl-tiny", overrides={"layer": layer})
    with pytest.raises(PhotonError, match=r"layer=" + str(layer).replace(".", r"\.")):
        check_request(OpenRequest("qwen2.5-vl-tiny", overrides={"layer": layer}), resolve_source("qwen2.5-vl-tiny"))
    pytest.importorskip("lmms_eval", reason="the lmms-eval extra")
    from photon.integrations.lmms_eval import PhotonLMMS

    with pytest.raises(PhotonError, match=r"layer=" + str(layer).replace(".", r"\.")):
        PhotonLMMS(backbone="qwen2.5-vl-tiny", layer=layer)


# -- resuming predictions --------------------------------------------------------------------------
SMALL_CT = ["--media", "ct.preprocess=false", "--media", "ct.size=[28,56,56]", "--max-new-tokens", "2", "--no-progress"]


@pytest.fixture()
def records(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(3)
    rows = []
    for i in range(3):
        nib.save(nib.Nifti1Image(rng.normal(-500, 100, (16, 32, 32)).astype(np.float32), np.eye(4)), str(tmp_path / f"ct{i}.nii.gz"))
        rows.append({"id": f"case{i}", "videos": [f"ct{i}.nii.gz"],
                     "messages": [{"role": "user", "content": f"<video>Question {i}?"}, {"role": "assistant", "content": "yes"}]})
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def infer(capsys, data, out, *extra):
    return cli(capsys, "infer", "--backbone", "qwen2.5-vl-tiny", "--data", str(data), "--out", str(out), *SMALL_CT, *extra)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_resumed_run_refuses_predictions_of_changed_records_and_redoes_them_when_asked(records, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert infer(capsys, records, out)[0] == 0
    first = lines(out)
    assert all(line["record"].startswith("sha256:") for line in first)
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    rows[1]["messages"][0]["content"] = "<video>A different question?"  # same id, changed question
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = infer(capsys, records, out)
    assert code == 2 and "1 answer records that changed since they were predicted (case1)" in err and "--on-change redo" in err
    assert lines(out) == first  # nothing touched
    code, _, err = infer(capsys, records, out, "--on-change", "redo")
    assert code == 0 and "wrote 1 predictions" in err
    again = {line["id"]: line for line in lines(out)}
    before = {line["id"]: line for line in first}
    assert sorted(again) == ["case0", "case1", "case2"]
    assert again["case0"] == before["case0"] and again["case2"] == before["case2"]
    assert again["case1"]["record"] != before["case1"]["record"]
    # a medium whose content changed (same path) is a changed record too
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((16, 32, 32), np.float32), np.eye(4)), str(records.parent / "ct2.nii.gz"))
    code, _, err = infer(capsys, records, out)
    assert code == 2 and "(case2)" in err


def test_another_records_file_is_not_merged_into_the_old_predictions(records, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert infer(capsys, records, out)[0] == 0
    other = tmp_path / "other.jsonl"
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    other.write_text("".join(json.dumps(dict(r, id=f"new{i}")) + "\n" for i, r in enumerate(rows)))
    code, _, err = infer(capsys, other, out)
    assert code == 2 and f"3 are for ids not in {other} (case0, case1, case2)" in err
    code, _, err = infer(capsys, other, out, "--on-change", "redo")
    assert code == 0 and [line["id"] for line in lines(out)] == ["new0", "new1", "new2"]


def test_resuming_with_another_process_count_keeps_finished_records_and_cleans_the_parts(records, tmp_path, capsys, monkeypatch):
    out = tmp_path / "p.jsonl"
    assert infer(capsys, records, out)[0] == 0
    done = out.read_text().splitlines()
    # what a 2-process run interrupted before its merge leaves: each rank's part, --out not yet written
    (tmp_path / ".p.jsonl.part-0-of-2").write_text(done[0] + "\n" + done[2] + "\n")
    (tmp_path / ".p.jsonl.part-1-of-2").write_text(done[1] + "\n")
    (tmp_path / ".p.jsonl.part-0-of-2.stats.json").write_text("{}")
    out.unlink()

    import photon.inference as inference

    def no_generation(*_, **__):
        raise AssertionError("a finished record was predicted again")

    monkeypatch.setattr(inference, "generate_batch", no_generation)
    code, _, err = infer(capsys, records, out)
    assert code == 0 and "wrote 0 predictions" in err and "3 already there" in err
    assert out.read_text().splitlines() == done
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".p.jsonl")) == []


def test_an_empty_records_file_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, _, err = infer(capsys, empty, tmp_path / "p.jsonl")
    assert code == 2 and "the records file is empty" in err and not (tmp_path / "p.jsonl").exists()


def test_the_task_writer_exits_1_when_it_left_records_out(records, tmp_path, capsys):
    from photon.integrations.lmms_tasks.__main__ import main as write_tasks

    rows = records.read_text() + json.dumps({"id": "broken", "videos": ["nowhere.nii.gz"],
                                             "messages": [{"role": "user", "content": "<video>?"}]}) + "\n"
    records.write_text(rows)
    assert write_tasks([str(tmp_path / "tasks"), "--records", f"3d-rad={records}"]) == 1
    assert "1 bad record(s) left out" in capsys.readouterr().err
    assert write_tasks([str(tmp_path / "tasks"), "--records", f"3d-rad={records}", "--allow-missing"]) == 0
    assert len((tmp_path / "tasks" / "photon_3drad.jsonl").read_text().splitlines()) == 3


# -- under a launcher ------------------------------------------------------------------------------
def test_launch_exits_2_when_every_worker_stops_on_bad_input(records, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    from photon.training.distributed import free_port

    result = subprocess.run(
        [sys.executable, "-m", "photon", "launch", "--nproc-per-node", "2", "--nnodes", "1", "--node-rank", "0",
         "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "infer", "--backbone", "qwen2.5-vl-tiny",
         "--data", str(records), "--out", str(tmp_path / "p.jsonl"), "--device", "cpu", "--keep-ratio", "1.5"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    # Each rank checks the settings before loading; the first to fail gets the others stopped (SIGTERM),
    # which may be before they printed their own line.
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert errors and all(re.match(r"photon infer \[rank [01]\]: error: selection.keep_ratio=1.5", line) for line in errors)
    assert re.search(r"photon launch: infer: bad input: [12] of 2 workers stopped, ranks", result.stderr)


def test_launch_exit_code_rule():
    from photon.commands.launch import exit_code

    assert exit_code([2, 2]) == 2 and exit_code([2, -15]) == 2  # the other was stopped by the launcher
    assert exit_code([130, -15]) == 130 and exit_code([-2]) == 130
    assert exit_code([1, 2]) == 1 and exit_code([]) == 1


def test_predictions_without_a_record_digest_are_not_taken_on_trust(records, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert infer(capsys, records, out)[0] == 0
    old = [{k: v for k, v in line.items() if k != "record"} for line in lines(out)]  # as an older Photon wrote them
    out.write_text("".join(json.dumps(line) + "\n" for line in old))
    code, _, err = infer(capsys, records, out)
    assert code == 2 and "3 carry no record digest (written by an older Photon)" in err
    code, _, err = infer(capsys, records, out, "--on-change", "redo")
    assert code == 0 and "wrote 3 predictions" in err and all(line["record"] for line in lines(out))


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path):
    """Reports, records and weights written through a temporary file are readable as a plain
    open() would leave them (mkstemp alone makes them 0600); a write that fails leaves the old file."""
    from photon.core.files import write_atomic, write_atomically

    previous = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic = tmp_path / "report.json"
        write_atomic(atomic, "{}")
        assert (atomic.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777) == 0o644

        def broken(stream):
            stream.write("half")
            raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            write_atomically(atomic, broken, mode="w")
        assert atomic.read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "report.json"]
    finally:
        os.umask(previous)
