"""The demo backbone: the shipped compact file reloads into the model it was saved from, it has
learned to look (held-out answers above their priors), and `photon demo --pretrain` runs its first
steps as documented."""

import json

import numpy as np
import pytest
import torch

from photon.cli import main
from photon.demo import backbone, phantoms
from photon.demo.pretrain import full_softmax_loss


def test_the_shipped_file_is_small_and_says_how_it_was_made():
    assert backbone.WEIGHTS.is_file(), "photon/demo/backbone.safetensors is missing: run `photon demo --pretrain`"
    assert backbone.WEIGHTS.stat().st_size <= 25 * 2**20
    facts = backbone.facts_of()
    assert facts["complete"] and facts["settings"]["steps"] == facts["checks"][-1]["step"]


def test_the_shipped_backbone_answers_above_every_prior_on_held_out_phantoms():
    """What pretraining measured on its held-out phantoms: every kind above the commoner answer's
    share, the position questions (each quadrant asked by name) included."""
    held_out = backbone.facts_of()["checks"][-1]["held_out"]
    assert set(held_out) == {"describe", *phantoms.KINDS}
    for kind, score in held_out.items():
        assert score["accuracy"] > score["prior"] + 0.05, (kind, score)


def test_a_reload_equals_the_saved_model_weight_for_weight(tmp_path):
    loaded = backbone.load()
    state = loaded.model.state_dict()
    table = backbone.embedding(loaded.model)
    ids = (table.abs().sum(1) > 0).nonzero()[:, 0].tolist()
    copy = backbone.save(loaded.model, ids, tmp_path / "copy.safetensors", {"from": "test"})
    again = backbone.load(copy).model.state_dict()
    assert state.keys() == again.keys()
    for key in state:
        assert torch.equal(state[key], again[key]), key
    assert backbone.facts_of(copy) == {"from": "test"}


def test_the_registered_name_opens_the_shipped_weights():
    from photon.wrapping import open_model, random_weights_note

    opened = open_model(backbone.NAME, mode="zero_shot").loaded
    direct = backbone.load().model.state_dict()
    for key, value in opened.model.state_dict().items():
        if key in direct:
            assert torch.equal(value, direct[key]), key
    assert random_weights_note(opened) is None  # pretrained, not seeded noise


def test_a_file_that_is_not_a_demo_backbone_is_named(tmp_path):
    from safetensors.torch import save_file

    from photon.core.errors import PhotonError

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(PhotonError, match="other.safetensors: not a demo backbone file"):
        backbone.load(path)
    with pytest.raises(PhotonError, match="missing.safetensors: no demo backbone weights; `photon demo --pretrain`"):
        backbone.load(tmp_path / "missing.safetensors")


def test_the_loss_over_the_vocabulary_rows_equals_the_full_softmax_when_other_rows_are_zero():
    torch.manual_seed(0)
    hidden, rows = torch.randn(5, 8), torch.randn(6, 8)
    full = torch.cat([rows, torch.zeros(100, 8)])
    targets = torch.tensor([0, 3, 5, 1, 2])
    expected = torch.nn.functional.cross_entropy(hidden @ full.T, targets)
    assert torch.allclose(full_softmax_loss(hidden @ rows.T, targets, 100), expected, atol=1e-6)


def test_pretraining_asks_each_volume_everything(tmp_path):
    path = phantoms.write_pretraining(tmp_path, "pretrain", 12, 0, (8, 112, 112))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_volume = {}
    for record in records:
        by_volume.setdefault(record["videos"][0], []).append(record)
    assert len(by_volume) == 12
    for asked in by_volume.values():
        held = {l["quadrant"] for l in asked[0]["meta"]["lesions"]}
        kinds = [r["meta"]["kind"] for r in asked]
        assert kinds.count("describe") == 5 and kinds.count("exists") == 4
        assert ("where" in kinds) == (len(held) == 1)
        for record in asked:
            answer = record["messages"][1]["content"]
            if record["meta"]["kind"] == "exists":
                assert answer == ("yes" if record["meta"]["region"] in held else "no")
            if record["meta"]["kind"] == "count":
                assert answer == str(len(held))
    # its own seed stream: none of the demo's training volumes comes back
    demo = phantoms.write_split(tmp_path / "demo", "train", 12, 0, (8, 112, 112))
    assert {r["id"] for r in records}.isdisjoint(json.loads(l)["id"] for l in demo.read_text().splitlines())


def test_photon_demo_pretrain_runs_its_first_steps_as_documented(tmp_path, capsys):
    """The documented command with a small budget: it writes a file that reloads, the trained rows
    are the vocabulary's and every other embedding row stays zero."""
    weights = tmp_path / "backbone.safetensors"
    code = main(["demo", "--pretrain", f"out={tmp_path / 'run'}", f"weights={weights}", "volumes=6", "check_volumes=3",
                 "steps=4", "check_every=2", "batch_size=4", "warmup_steps=1", "progress=false"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"demo backbone: {weights}" in printed and "held-out accuracy (prior) at step 4" in printed
    facts = backbone.facts_of(weights)
    assert [c["step"] for c in facts["checks"]] == [2, 4] and facts["complete"]
    assert np.isfinite(facts["checks"][-1]["loss"])
    model = backbone.load(weights).model
    table = backbone.embedding(model)
    used = (table.abs().sum(1) > 0).nonzero()[:, 0]
    assert 20 < len(used) <= facts["vocabulary_size"] < 1000  # pad and <|video_pad|> rows are never read
    start = backbone.build(seed=0).model.state_dict()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, start[k])]
    assert any("visual" in k for k in changed) and any("layers.7" in k for k in changed)
    log = (tmp_path / "run" / "pretrain-log.jsonl").read_text().splitlines()
    assert len(log) == 2
