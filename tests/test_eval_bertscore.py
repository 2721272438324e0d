"""BERTScore through a tiny random RoBERTa saved to a temporary folder (nothing is downloaded),
and `photon eval` with and without a BERTScore model."""

import json
from pathlib import Path

import pytest

from photon.cli import main
from photon.core.errors import PhotonError
from photon.evaluation import bertscore
from photon.evaluation.bertscore import BERTScoreUnavailable, bertscore_f1, load_encoder

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"
CORPUS = ["the nodule is in the left upper lobe", "no pleural effusion is seen", "Pleural effusion on the right side.",
          "a 5 mm nodule", "lung cancer", "pneumonia"]
CANDIDATES = ["no effusion seen", "nodule left", "the nodule is in the left upper lobe", "pleural"]
REFERENCES = ["no pleural effusion", "the nodule is in the left upper lobe", "the nodule is in the left upper lobe",
              "a 5 mm nodule on the right side"]


def _save_tiny_roberta(folder: Path, add_prefix_space: bool) -> Path:
    import tokenizers  # torch and tokenizers come with transformers: no skip
    import torch
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 3, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = RobertaTokenizer(vocab=bpe.get_vocab(), merges=merges, model_max_length=128, add_prefix_space=add_prefix_space)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id)
    model = RobertaModel(config)
    with torch.no_grad():
        # A shared offset in layer 2's output makes token similarities positive, as in real
        # RoBERTa; bert-score scores padding as similarity 0, so only then do the two agree.
        model.encoder.layer[1].output.LayerNorm.bias.fill_(2.0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _save_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"), add_prefix_space=True)


def test_f1_equals_the_bert_score_package(tiny):
    bert_score = pytest.importorskip("bert_score", reason="needs bert-score (the eval extra)")
    _, _, expected = bert_score.score(CANDIDATES, REFERENCES, model_type=str(tiny), num_layers=2, batch_size=3)
    ours = bertscore_f1(CANDIDATES, REFERENCES, load_encoder(str(tiny), layer=2), batch_size=3)
    assert ours == pytest.approx(100 * expected.numpy(), abs=1e-4)
    assert ours[2] == pytest.approx(100.0)  # identical sentences


def test_empty_sides_score_zero_and_batches_do_not_matter(tiny):
    encoder = load_encoder(str(tiny), layer=2)
    scores = bertscore_f1(["", "lung cancer", "pneumonia", "nodule"], ["pneumonia", "", "pneumonia", "a 5 mm nodule"], encoder)
    assert scores[0] == 0 and scores[1] == 0 and scores[2] == pytest.approx(100.0)
    one_by_one = bertscore_f1(CANDIDATES, REFERENCES, encoder, batch_size=1)
    assert one_by_one == pytest.approx(bertscore_f1(CANDIDATES, REFERENCES, encoder, batch_size=4), abs=1e-4)


def test_roberta_inputs_get_their_prefix_space(tmp_path):
    folder = _save_tiny_roberta(tmp_path / "no-prefix", add_prefix_space=False)
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(folder)
    encoder = load_encoder(str(folder), layer=3)
    assert encoder.tokenizer("no effusion")["input_ids"] == plain(" no effusion")["input_ids"]
    assert plain("no effusion")["input_ids"] != plain(" no effusion")["input_ids"]


def test_missing_model_is_a_clear_error(tmp_path, tiny):
    for name in (str(tmp_path / "nope"), "photon-test/not-a-cached-model"):
        with pytest.raises(BERTScoreUnavailable, match=r"BERTScore model .*could not be loaded.*--bertscore-model") as info:
            load_encoder(name)
        assert repr(name) in str(info.value)
    with pytest.raises(PhotonError, match="layer 17 is out of range: .* has layers 1..3"):
        load_encoder(str(tiny))


def _run_3d_rad(tmp_path, *extra):
    pytest.importorskip("sacrebleu", reason="3D-RAD needs sacrebleu (the eval extra)")
    pytest.importorskip("rouge_score", reason="3D-RAD needs rouge-score (the eval extra)")
    out = tmp_path / "out"
    code = main(["eval", "--pred", str(FIXTURES / "3d-rad.jsonl"), "--out", str(out), "--resamples", "20", *extra])
    report = json.loads((out / "report.json").read_text()) if code == 0 else None
    return code, report


def test_eval_with_a_local_bertscore_model(tmp_path, tiny):
    code, report = _run_3d_rad(tmp_path, "--bertscore-model", str(tiny), "--bertscore-layer", "2")
    assert code == 0
    subtasks = {r["key"]: r for r in next(t for t in report["tables"] if t["name"] == "subtask")["rows"]}
    encoder = load_encoder(str(tiny), layer=2)
    # Diagnosis: the empty answer scores 0, the other is compared after its think block is dropped.
    pair = bertscore_f1(["lung cancer"], ["lung cancer"], encoder)[0]
    assert subtasks["anomaly_detection/Diagnosis"]["metrics"]["bertscore"]["value"] == pytest.approx(pair / 2, abs=1e-4)
    size = bertscore_f1(["5 mm", "10 mm"], ["5 mm", "12 mm"], encoder).mean()
    assert subtasks["medical_computation/Size"]["metrics"]["bertscore"]["value"] == pytest.approx(size, abs=1e-4)
    assert any("layer 2" in note for note in report["notes"])


def test_eval_without_a_bertscore_model_still_scores_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bertscore, "DEFAULT_MODEL", "photon-test/not-a-cached-model")
    code, report = _run_3d_rad(tmp_path)
    assert code == 0
    err = capsys.readouterr().err
    assert "BERTScore skipped" in err and "--bertscore-model" in err
    task = {r["key"]: r for r in report["tables"][0]["rows"]}
    assert "bertscore" not in task["open"]["metrics"] and task["open"]["metrics"]["bleu1"]["value"] > 0
    assert [c["key"] for c in report["tables"][0]["columns"]] == ["bleu1", "rouge1", "accuracy"]


def test_a_named_bertscore_model_that_is_missing_stops_the_command(tmp_path, capsys):
    code, _ = _run_3d_rad(tmp_path, "--bertscore-model", str(tmp_path / "roberta-large"))
    assert code == 2
    err = capsys.readouterr().err
    assert "roberta-large" in err and "--bertscore-model" in err
