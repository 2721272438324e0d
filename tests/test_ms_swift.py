"""Photon inside ms-swift: `swift infer` and `swift sft` on a Qwen2.5-VL hub folder, offline, with
Photon attached through ms-swift's --external_plugins (photon/integrations/ms_swift.py).

ms-swift 4.6 pins transformers<5.20 and its Qwen-VL types need torchvision, so these run in their
own venv (.ci/transformers-matrix); the option parsing is tested in the main suite as well."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from photon.core.errors import PhotonError
from photon.integrations.ms_swift import attach_options

PLUGIN = Path(__file__).resolve().parent.parent / "photon" / "integrations" / "ms_swift.py"


def test_attach_options_are_checked_by_name_and_value():
    assert attach_options(None) == {}
    assert attach_options("mode=zero_shot, keep_ratio=0.25,layer=1,pruner=fastv") == {
        "mode": "zero_shot", "keep_ratio": 0.25, "layer": 1, "pruner": "fastv"}
    with pytest.raises(PhotonError, match="keep_ratio"):
        attach_options("keep_ratio=1.5")
    with pytest.raises(PhotonError, match="colour"):
        attach_options("colour=red")
    with pytest.raises(PhotonError, match="not KEY=VALUE"):
        attach_options("zero_shot")


def test_the_plugin_file_prints_its_own_path():
    out = subprocess.run([sys.executable, "-m", "photon.integrations.ms_swift"], capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == PLUGIN


swift = pytest.importorskip("swift", reason="ms-swift runs in its own venv (.ci/transformers-matrix): it pins transformers<5.20")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from tests.hub_layouts import write_qwen2_5_hub_folder

    root = tmp_path_factory.mktemp("swift")
    write_qwen2_5_hub_folder(root / "qwen2.5-vl")
    pixels = (np.random.default_rng(0).random((112, 112, 3)) * 255).astype("uint8")  # 4 x 4 merged tokens
    Image.fromarray(pixels).save(root / "scan.png")
    records = [
        {"messages": [{"role": "user", "content": "<image>Is there a lesion in the upper left?"},
                      {"role": "assistant", "content": "Yes, in the upper left."}], "images": [str(root / "scan.png")]},
        {"messages": [{"role": "user", "content": "<image>How many lesions are there?"},
                      {"role": "assistant", "content": "Two."}], "images": [str(root / "scan.png")]},
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def swift_run(command, workspace, out_dir, *args, attach=None, model_type="photon_qwen2_5_vl"):
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", USE_HF="1", PHOTON_RECORDS=str(out_dir / "selections.jsonl"))
    env.pop("PHOTON_ATTACH", None)
    if attach is not None:
        env["PHOTON_ATTACH"] = attach
    swift_cli = Path(sys.executable).with_name("swift")
    result = subprocess.run(
        [str(swift_cli), command, "--model", str(workspace / "qwen2.5-vl"), "--model_type", model_type,
         "--template", "qwen2_5_vl", "--external_plugins", str(PLUGIN), "--use_hf", "true", "--torch_dtype", "float32", *args],
        capture_output=True, text=True, env=env, cwd=out_dir, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    selections = out_dir / "selections.jsonl"
    rows = [json.loads(line) for line in selections.read_text().splitlines()] if selections.exists() else []
    return result, [s for row in rows for s in row["samples"]]


def infer(workspace, out_dir, **kw):
    result, selections = swift_run("infer", workspace, out_dir, "--infer_backend", "transformers", "--val_dataset",
                                   str(workspace / "data.jsonl"), "--max_new_tokens", "6", "--result_path",
                                   str(out_dir / "result.jsonl"), **kw)
    answers = [json.loads(line)["response"] for line in (out_dir / "result.jsonl").read_text().splitlines()]
    return answers, selections


def test_swift_infer_runs_photon_and_keep_all_answers_like_stock(workspace, tmp_path):
    stock, none = infer(workspace, tmp_path / "stock", model_type="qwen2_5_vl")
    assert len(stock) == 2 and none == []  # the stock type is untouched by the plugin
    same, kept_all = infer(workspace, tmp_path / "keep-all", attach="keep=all")
    assert same == stock
    assert [(s["n_visual"], s["n_kept"]) for s in kept_all] == [(16, 16), (16, 16)]
    pruned, selections = infer(workspace, tmp_path / "pruned", attach="mode=zero_shot,keep_ratio=0.25,layer=1")
    assert len(pruned) == 2
    assert [(s["n_visual"], s["n_kept"], s["layer"], s["rule"]) for s in selections] == [(16, 4, 1, "keep_ratio=0.25")] * 2


def sft(workspace, out_dir, **kw):
    result, selections = swift_run(
        "sft", workspace, out_dir, "--dataset", str(workspace / "data.jsonl"), "--tuner_type", "full", "--max_steps", "2",
        "--output_dir", str(out_dir / "run"), "--per_device_train_batch_size", "1", "--save_strategy", "no",
        "--report_to", "none", "--dataloader_num_workers", "0", "--split_dataset_ratio", "0", "--logging_steps", "1",
        "--seed", "0", "--data_seed", "0", **kw)
    losses = [float(line.split("'loss': '")[1].split("'")[0]) for line in (result.stdout + result.stderr).replace("\r", "\n").splitlines()
              if "'loss': '" in line]
    return losses, selections


def test_swift_sft_trains_through_photons_pruned_forward(workspace, tmp_path):
    stock, _ = sft(workspace, tmp_path / "stock", model_type="qwen2_5_vl")
    kept_all, every = sft(workspace, tmp_path / "keep-all", attach="keep=all")
    assert len(stock) == 2 and kept_all == stock  # the same loss, step by step, as ms-swift's own model type
    assert every and all(s["n_kept"] == s["n_visual"] == 16 for s in every)
    pruned, selections = sft(workspace, tmp_path / "pruned", attach="keep_ratio=0.25,layer=1")
    assert len(pruned) == 2 and all(np.isfinite(pruned))
    assert len(selections) >= 2 and all((s["n_visual"], s["n_kept"]) == (16, 4) for s in selections)
