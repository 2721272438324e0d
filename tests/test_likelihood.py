"""Closed questions scored by likelihood (photon/evaluation/likelihood.py) score over the very
tokens generation keeps: a generated answer's score equals the log-probabilities generate() itself
gave its tokens, pruned or not, and a batch scores each candidate as it scores alone."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from photon.core.losses import IGNORE_INDEX
from photon.demo import phantoms
from photon.demo.config import DemoConfig
from photon.demo.run import phantom_dataset
from photon.evaluation.likelihood import choose_answer, continuation_logprobs
from photon.inference import PLAIN_GREEDY, stop_ids, unpruned
from photon.wrapping import open_model

SHAPE = (4, 56, 56)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    records = phantoms.write_split(folder, "test", 3, 0, SHAPE)
    cfg = DemoConfig(volume=list(SHAPE), progress=False)
    torch.manual_seed(0)
    loaded = open_model("qwen2.5-vl-tiny", mode="zero_shot", overrides={"keep_ratio": 0.5}).loaded
    loaded.model.eval()
    return loaded, phantom_dataset(loaded, records, cfg, train=False)


def _generated_with_logprobs(loaded, encoded, n=3):
    """generate()'s own greedy tokens for one prompt and the log-probability it gave each."""
    from photon.adapters.qwen_inputs import model_inputs
    from transformers import GenerationConfig

    batch = loaded.encoder.collate([encoded])
    inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
    config = GenerationConfig(max_new_tokens=n, eos_token_id=stop_ids(loaded), pad_token_id=loaded.encoder.pad_id,
                              output_logits=True, return_dict_in_generate=True, **PLAIN_GREEDY)
    with torch.no_grad():
        out = loaded.model.generate(**inputs, generation_config=config)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:]
    logprobs = [torch.log_softmax(step[0].float(), -1)[t] for step, t in zip(out.logits, tokens)]
    stop = set(stop_ids(loaded))
    kept = [(int(t), float(lp)) for t, lp in zip(tokens, logprobs)]
    while kept and kept[-1][0] in stop:  # scored answers stop before <|im_end|>
        kept.pop()
    return [t for t, _ in kept], sum(lp for _, lp in kept)


def _with_continuation(encoded, tokens):
    ids = torch.cat([encoded["input_ids"], torch.tensor(tokens, dtype=torch.long)])
    labels = torch.cat([torch.full_like(encoded["input_ids"], IGNORE_INDEX), torch.tensor(tokens, dtype=torch.long)])
    return {**encoded, "input_ids": ids, "labels": labels}


@pytest.mark.parametrize("pruned", [True, False])
def test_a_generated_answer_scores_as_generate_scored_it(case, pruned):
    loaded, dataset = case
    encoded = dataset[0]
    with torch.no_grad(), (contextlib.nullcontext() if pruned else unpruned(loaded.model)):
        tokens, expected = _generated_with_logprobs(loaded, encoded)
        assert tokens, "the random model stopped at once; pick another seed"
        [(score, greedy)] = continuation_logprobs(loaded, [_with_continuation(encoded, tokens)])
    assert greedy is True
    # Unpruned: cached decode vs one forward differ by float32 rounding. Pruned: also by what the
    # continuation sees below layer l (every visual token in one forward; only the kept ones in
    # evict_all decoding, docs/benchmarks.md "The demo backbone"): 5e-4 relative on this random model.
    assert score == pytest.approx(expected, rel=1e-3)
    if pruned:  # the scoring forward kept half the visual tokens, as generation did
        record = loaded.model._photon.records[0]
        assert record["n_kept"] == record["n_visual"] // 2


def test_a_batch_scores_each_candidate_as_it_scores_alone(case):
    loaded, dataset = case
    sample = dataset.load_sample(1)
    choices = phantoms.CHOICES["where"]  # two tokens each, different lengths of padding in a batch with "no"
    with torch.no_grad():
        best, scores = choose_answer(loaded, sample, choices)
        alone = {c: choose_answer(loaded, sample, [c])[1][c] for c in choices}
        mixed = choose_answer(loaded, sample, ["no", *choices])[1]
    assert best == max(scores, key=scores.get)
    for choice in choices:
        assert scores[choice] == pytest.approx(alone[choice], abs=1e-3)
        assert mixed[choice] == pytest.approx(alone[choice], abs=1e-3)
    assert len(set(round(v, 4) for v in scores.values())) == len(choices)  # the candidates were told apart


def test_choose_answer_replaces_the_records_own_answer(case):
    loaded, dataset = case
    sample = dataset.load_sample(2)
    without = dataclasses.replace(sample, messages=[m for m in sample.messages if m["role"] != "assistant"])
    with torch.no_grad():
        assert choose_answer(loaded, sample, ["yes", "no"])[1] == pytest.approx(choose_answer(loaded, without, ["yes", "no"])[1])
    with pytest.raises(ValueError, match="no allowed answers"):
        choose_answer(loaded, sample, [])
