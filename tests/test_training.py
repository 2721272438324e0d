"""photon train on the tiny backbone, one CPU process, ZeRO-2 (and a 2-process gloo run)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("deepspeed", reason="the train extra (DeepSpeed) is not installed")

import photon  # noqa: E402
from photon.core.errors import PhotonError  # noqa: E402
from photon.training import trainer  # noqa: E402
from photon.training.config import TrainConfig  # noqa: E402
from photon.training.trainer import load_train_config, train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def write_records(folder: Path, n: int = 6, text_only_at: int | None = None) -> Path:
    """Phantom volumes with a bright block on the left or right; the answer names the side."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        if i == text_only_at:
            records.append({"id": f"text{i}", "messages": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"}]})
            continue
        volume = rng.normal(-500, 40, (28, 56, 56)).astype(np.float32)
        left = i % 2 == 0
        volume[8:20, 28:48, 10:20] += 1300 if left else 0  # nibabel axes R->L: high index = patient left
        volume[8:20, 8:28, 10:20] += 0 if left else 1300
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(folder / f"ct{i}.nii.gz"))
        records.append({
            "id": f"case{i}",
            "messages": [{"role": "user", "content": "<video>Which side holds the lesion?"},
                         {"role": "assistant", "content": "left" if left else "right"}],
            "videos": [f"ct{i}.nii.gz"],
        })
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def config(tmp_path, records, *overrides) -> TrainConfig:
    return load_train_config(
        str(ROOT / "configs/train/phase2.yaml"),
        [
            "model.backbone=qwen2.5-vl-tiny",
            "model.gradient_checkpointing=false",
            f"data.train={records}",
            "data.media={ct: {size: [28, 56, 56], preprocess: false}}",
            "data.shuffle=false",
            f"run.output_dir={tmp_path / 'out'}",
            "run.progress=false",
            "photon.schedule.scale_with_run=false",
            *overrides,
        ],
    )


def read_log(cfg):
    return [json.loads(line) for line in (Path(cfg.run.output_dir) / "log.jsonl").read_text().splitlines()]


def test_phase1_trains_only_the_patch_embedding(tmp_path):
    records = write_records(tmp_path, n=2)
    cfg = config(tmp_path, records, "run.phase=1", "model.volume_embedding=inflate", "run.max_steps=2", "optim.lr=1e-2")
    before = None

    run = trainer.build_run(cfg)
    model = run.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.visual.patch_embed.proj.weight"}
    assert getattr(model, "_photon", None) is None  # no pruning in phase 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = train(cfg)
    after = dict(run.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed == {"model.visual.patch_embed.proj.weight"}


def test_stages_switch_at_the_configured_steps_and_the_log_has_every_field(tmp_path):
    records = write_records(tmp_path)
    cfg = config(tmp_path, records, "run.max_steps=6", "photon.schedule.soft_start=2", "photon.schedule.hard_start=4", "photon.schedule.flip_start=5")
    train(cfg)
    rows = read_log(cfg)
    assert [r["stage"] for r in rows] == ["full", "full", "soft", "soft", "hard", "flip"]
    assert [r["step"] for r in rows] == list(range(6))
    for row in rows:
        assert row["samples_per_s"] > 0 and row["peak_memory_mb"] > 0 and row["lr"] > 0
        # one sample per batch: 14 x 2 x 2 visual tokens (28 x 56 x 56 frames, temporal patch 2)
        assert row["visual_tokens_per_s"] == pytest.approx(56 * row["samples_per_s"])
        if row["stage"] == "full":  # no pruning and no retention yet
            assert row["keep_ratio_mean"] is None and row["theta_mean"] is None and row["loss_band"] is None
            assert row["loss"] == pytest.approx(row["loss_ce"] if row["loss_ce"] is not None else row["loss_robust"])
        else:
            assert 0 < row["keep_ratio_min"] <= row["keep_ratio_mean"] <= row["keep_ratio_max"] <= 1
            assert 0 < row["theta_mean"] < 0.9 and row["band_trigger_rate"] in (0.0, 1.0)
            if not row["augment"] and not row["flip_batch"]:  # release objective: CE + band
                assert row["loss"] == pytest.approx(row["loss_ce"] + row["loss_band"], rel=1e-5)
                # the band is relu(r - 0.8) + relu(0.3 - r) of the batch's mean retention
                assert row["loss_band"] >= 0 and (row["loss_band"] > 0) == bool(row["band_trigger_rate"])
    assert rows[5]["flip_batch"] or rows[5]["augment"] or rows[5]["loss_flip"] is None


def test_hard_stage_trains_the_threshold_predictor(tmp_path):
    records = write_records(tmp_path, n=2)
    cfg = config(tmp_path, records, "run.max_steps=2", "optim.lr=1e-2", "photon.schedule.soft_start=0",
                 "photon.schedule.hard_start=0", "photon.schedule.flip_start=100", "photon.schedule.robust_prob=0")
    initial = {k: v.clone() for k, v in trainer.build_run(cfg).model.photon_pruner.state_dict().items()}  # seeded
    train(cfg)
    assert all(r["stage"] == "hard" for r in read_log(cfg))
    trained = load_file(str(Path(cfg.run.output_dir) / "checkpoints/step-00000002/photon.safetensors"))
    # Adam moves every parameter whose gradient is non-zero.
    assert all(not torch.equal(initial[k], trained[k]) for k in initial)


def test_loss_decreases_on_a_small_learnable_set(tmp_path):
    records = write_records(tmp_path, n=4)
    cfg = config(tmp_path, records, "run.max_steps=24", "optim.lr=3e-3", "optim.warmup_ratio=0", "optim.schedule=constant",
                 "photon.schedule.robust_prob=0", "photon.schedule.soft_start=1000", "photon.schedule.hard_start=1000",
                 "photon.schedule.flip_start=1000")
    train(cfg)
    losses = [r["loss"] for r in read_log(cfg)]
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4


def test_resume_continues_exactly(tmp_path, monkeypatch):
    records = write_records(tmp_path)
    common = ["run.max_steps=6", "run.save_every=3", "photon.schedule.soft_start=2", "photon.schedule.hard_start=3",
              "photon.schedule.flip_start=4", "photon.schedule.robust_prob=0.3", "optim.lr=1e-3", "data.shuffle=true"]
    straight = config(tmp_path / "a", records, *common)
    train(straight)
    stopped = config(tmp_path / "b", records, *common)
    real_step = trainer._micro_step

    def killed_after_the_checkpoint(run, batch):
        if run.micro_step == 4:  # the checkpoint at step 3 is on disk; this step is lost
            raise KeyboardInterrupt
        return real_step(run, batch)

    monkeypatch.setattr(trainer, "_micro_step", killed_after_the_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(stopped)
    monkeypatch.setattr(trainer, "_micro_step", real_step)
    train(stopped, resume=True)
    a, b = read_log(straight), read_log(stopped)
    assert [r["step"] for r in b] == list(range(6))  # the lost step 3 is logged once, by the resumed run
    resumed = b[3:]
    for x, y in zip(a[3:], resumed, strict=True):
        assert (x["step"], x["stage"], x["lr"], x["augment"]) == (y["step"], y["stage"], y["lr"], y["augment"])
    final = "checkpoints/step-00000006"
    for name in ("model.safetensors", "photon.safetensors"):
        wa = load_file(str(Path(straight.run.output_dir) / final / name))
        wb = load_file(str(Path(stopped.run.output_dir) / final / name))
        assert wa.keys() == wb.keys()
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)


def test_checkpoint_loads_as_a_photon_model_and_old_ones_are_pruned(tmp_path):
    records = write_records(tmp_path, n=2)
    cfg = config(tmp_path, records, "run.max_steps=3", "run.save_every=1", "run.keep_last=2")
    train(cfg)
    root = Path(cfg.run.output_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step-00000002", "step-00000003"]
    assert (root / "latest").read_text() == "step-00000003"
    loaded = photon.load(str(root / "step-00000003"))
    assert loaded.model._photon.config.mode == "trained"


def test_checkpoint_accepts_the_run_folder_and_the_latest_pointer(tmp_path, capsys):
    from photon.cli import main
    from photon.opening import resolve_source

    records = write_records(tmp_path, n=2)
    cfg = config(tmp_path, records, "run.max_steps=2", "run.save_every=1", "run.keep_last=2")
    train(cfg)
    out = Path(cfg.run.output_dir)
    newest = out / "checkpoints" / "step-00000002"
    kinds = {out: "run_folder", out / "checkpoints": "run_folder", out / "checkpoints" / "latest": "pointer",
             newest: "photon_checkpoint"}
    for given, kind in kinds.items():
        source = resolve_source(str(given))
        assert (source.folder, source.kind, source.notes) == (newest, kind, ())
    capsys.readouterr()  # what training printed
    for given in (out, out / "checkpoints" / "latest"):
        assert main(["attach", "--checkpoint", str(given), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["mode"] == "trained" and summary["backbone"] == "qwen2.5-vl-tiny"
    import photon

    for given in (out, out / "checkpoints" / "latest"):  # the Python API takes the same paths
        loaded = photon.load(str(given))
        assert loaded.model._photon.config.mode == "trained"


def test_a_batch_without_visual_tokens_trains(tmp_path):
    records = write_records(tmp_path, n=3, text_only_at=0)
    cfg = config(tmp_path, records, "run.max_steps=3", "photon.schedule.soft_start=0", "photon.schedule.hard_start=0")
    train(cfg)
    rows = read_log(cfg)
    assert rows[0]["keep_ratio_mean"] is None and rows[1]["keep_ratio_mean"] is not None


def test_two_ranks_with_a_text_only_batch_on_one_do_not_hang(tmp_path):
    records = write_records(tmp_path, n=4, text_only_at=1)  # rank 1's first batch has no visual token
    out = tmp_path / "out2"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    from photon.training.distributed import free_port

    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "-m", "photon", "train", "--config", str(ROOT / "configs/train/phase2.yaml"),
        "model.backbone=qwen2.5-vl-tiny", "model.gradient_checkpointing=false", f"data.train={records}",
        "data.media={ct: {size: [28, 56, 56], preprocess: false}}", "data.shuffle=false", f"run.output_dir={out}",
        "run.progress=false", "run.max_steps=2", "photon.schedule.scale_with_run=false",
        "photon.schedule.soft_start=0", "photon.schedule.hard_start=0",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert (out / "checkpoints" / "step-00000002" / "model.safetensors").is_file()


def _colour_present(image, hex_colour: str) -> bool:
    rgb = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return bool((np.abs(pixels.astype(int) - rgb).max(axis=1) <= 2).any())


def test_plot_training_draws_each_stage_with_its_key_and_the_retention_curve(tmp_path):
    from PIL import Image

    from photon.cli import main
    from photon.training.plot import STAGE_COLOURS

    records = write_records(tmp_path, n=2)
    cfg = config(tmp_path, records, "run.max_steps=4", "photon.schedule.soft_start=1", "photon.schedule.hard_start=2")
    train(cfg)
    png = tmp_path / "curve.png"
    assert main(["plot-training", str(Path(cfg.run.output_dir) / "log.jsonl"), "--out", str(png)]) == 0
    image = Image.open(png)
    assert image.size == (900, 960)  # three panels: retention, band trigger rate, loss
    for stage in ("full", "soft", "hard"):
        assert _colour_present(image, STAGE_COLOURS[stage]), stage  # shaded, and in the key
    assert _colour_present(image, "#1f77b4")  # the keep-ratio curve
    assert not _colour_present(image, STAGE_COLOURS["flip"])  # no flip stage in this run, none in the key

    phase1 = tmp_path / "p1"
    phase1.mkdir()
    log = phase1 / "log.jsonl"
    log.write_text("".join(json.dumps({"step": k, "stage": "phase1", "loss": 2.0 - k / 10, "loss_ce": 2.0 - k / 10}) + "\n"
                           for k in range(5)))
    assert main(["plot-training", str(log)]) == 0
    single = Image.open(log.with_suffix(".png"))
    assert single.size == (900, 360)  # the loss panel alone: no empty retention or band panels
    assert _colour_present(single, "#2ca02c")  # the CE curve


def test_phase2_starts_from_a_folder_written_by_photon_attach_save(tmp_path):
    from photon.cli import main

    wrapped = tmp_path / "wrapped"
    assert main(["attach", "--backbone", "qwen2.5-vl-tiny", "--layer", "2", "--save", str(wrapped)]) == 0  # zero-shot
    records = write_records(tmp_path, n=2)
    cfg = config(tmp_path, records, f"model.checkpoint={wrapped}", "run.max_steps=2", "photon.schedule.soft_start=0",
                 "photon.schedule.hard_start=0")
    run = train(cfg)
    assert run.model._photon.layer == 2 and run.model._photon.config.mode == "trained"  # the wrapping's layer, not 1
    assert [r["stage"] for r in read_log(cfg)] == ["hard", "hard"]
    final = Path(cfg.run.output_dir) / "checkpoints" / "step-00000002"
    assert photon.load(str(final)).model._photon.layer == 2


def test_a_second_run_into_a_used_folder_is_refused_and_the_first_survives(tmp_path, capsys):
    from photon.cli import main

    records = write_records(tmp_path, n=2)
    cfg = config(tmp_path, records, "run.max_steps=2", "run.save_every=1", "run.keep_last=1")
    train(cfg)
    out = Path(cfg.run.output_dir)
    log_before = (out / "log.jsonl").read_text()
    checkpoints_before = sorted(p.name for p in (out / "checkpoints").iterdir())
    argv = ["train", "--config", str(ROOT / "configs/train/phase2.yaml"), "model.backbone=qwen2.5-vl-tiny",
            f"data.train={records}", "data.media={ct: {size: [28, 56, 56]}}", f"run.output_dir={out}",
            "run.max_steps=1", "run.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "log.jsonl").read_text() == log_before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == checkpoints_before
    assert main([*argv, "--overwrite"]) == 0
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [0]
    root = out / "checkpoints"
    assert (root / "latest").read_text() == "step-00000001" and (root / "step-00000001" / "trainer_state.json").is_file()
    assert not (root / "step-00000002").exists()  # the earlier run's checkpoints went with --overwrite


def test_keep_last_never_removes_the_checkpoint_latest_names(tmp_path):
    from photon.training.state import prune_old

    root = tmp_path / "checkpoints"
    for step in (8, 9, 10, 2):
        (root / f"step-{step:08d}").mkdir(parents=True)
    prune_old(root, keep_last=2, latest_name="step-00000002")  # older runs left higher steps behind
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000010"]
    prune_old(root, keep_last=1, latest_name="step-00000002")
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002"]


def test_resume_refuses_a_checkpoint_whose_files_changed(tmp_path):
    from photon.cli import main

    records = write_records(tmp_path, n=2)
    cfg = config(tmp_path, records, "run.max_steps=2", "run.save_every=1")
    train(cfg)
    step = Path(cfg.run.output_dir) / "checkpoints" / "step-00000002"
    manifest = json.loads((step / "manifest.json").read_text())["sha256"]
    assert "trainer_state.json" in manifest and "photon.safetensors" in manifest
    assert any(name.startswith("deepspeed/") and name.endswith(".pt") for name in manifest)  # the pickled state is covered
    pickled = next(step.glob("deepspeed/state/*optim_states.pt"))
    pickled.write_bytes(pickled.read_bytes() + b"\0")
    argv = ["train", "--config", str(ROOT / "configs/train/phase2.yaml"), "model.backbone=qwen2.5-vl-tiny",
            f"data.train={records}", "data.media={ct: {size: [28, 56, 56], preprocess: false}}", "data.shuffle=false",
            f"run.output_dir={cfg.run.output_dir}", "run.max_steps=3", "run.progress=false",
            "photon.schedule.scale_with_run=false", "--resume"]
    with pytest.raises(PhotonError, match=r"do not match manifest.json \(changed: deepspeed/state/"):
        train(load_train_config(str(ROOT / "configs/train/phase2.yaml"), argv[3:-1]), resume=True)
    (step / "manifest.json").unlink()
    assert main(argv) == 2


def test_gradient_checkpointing_recomputes_layers_and_trains_the_same_weights(tmp_path):
    records = write_records(tmp_path, n=2)
    common = ["run.max_steps=2", "optim.lr=1e-2", "photon.schedule.soft_start=0", "photon.schedule.hard_start=0",
              "photon.schedule.flip_start=100", "photon.schedule.robust_prob=0"]
    plain = config(tmp_path / "plain", records, *common)
    checkpointed = config(tmp_path / "ckpt", records, *common, "model.gradient_checkpointing=true")
    run = train(checkpointed)
    layers = run.model.model.language_model.layers
    assert all(layer.gradient_checkpointing for layer in layers)
    train(plain)
    final = "checkpoints/step-00000002"
    for name in ("model.safetensors", "photon.safetensors"):
        a = load_file(str(Path(plain.run.output_dir) / final / name))
        b = load_file(str(Path(checkpointed.run.output_dir) / final / name))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_model_freeze_keeps_the_named_parameters_and_refuses_a_pattern_that_matches_none(tmp_path):
    records = write_records(tmp_path, n=2)
    # The tiny backbone ties its LM head to the token embedding: one name freezes both.
    cfg = config(tmp_path, records, "run.max_steps=2", "optim.lr=1e-2", 'model.freeze=["lm_head.weight", "*.layers.0.mlp.*"]')
    run = trainer.build_run(cfg)
    frozen = {n for n, p in run.model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    assert "model.language_model.embed_tokens.weight" in frozen and "model.language_model.layers.0.mlp.up_proj.weight" in frozen
    assert not any(n.startswith("model.language_model.layers.1.") for n in frozen)
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    after = dict(train(cfg).model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert "model.language_model.embed_tokens.weight" not in changed and "model.language_model.layers.0.mlp.up_proj.weight" not in changed
    assert "model.language_model.layers.1.mlp.up_proj.weight" in changed
    with pytest.raises(PhotonError, match=r"model.freeze: 'lm_heads\.\*' matches no parameter"):
        trainer.build_run(config(tmp_path / "b", records, 'model.freeze=["lm_heads.*"]'))
