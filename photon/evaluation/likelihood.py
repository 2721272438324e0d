"""Closed questions scored as closed: each allowed answer's log-likelihood through the (pruned)
forward, the likeliest one taken as the model's choice (lmms-eval's multiple-choice convention:
the sum of the answer's token log-probabilities given the prompt, the closing <|im_end|> not
scored).

The selection is the one generation makes: ITS reads the question's tokens, which end before the
assistant turn, and the causal attention of the selection layer never sees the answer, so every
candidate of one prompt is scored over the same kept tokens as the free answer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from photon.core.losses import IGNORE_INDEX


def score_answer_only(encoded: dict[str, Any]) -> dict[str, Any]:
    """The encoded sample with its closing <|im_end|> taken out of the labels (it follows every
    candidate alike and would only add the same kind of term to each)."""
    labels = encoded["labels"].clone()
    positions = (labels != IGNORE_INDEX).nonzero().squeeze(1)
    labels[positions[-1:]] = IGNORE_INDEX
    return {**encoded, "labels": labels}


def continuation_logprobs(loaded, encoded: Sequence[dict[str, Any]]) -> list[tuple[float, bool]]:
    """For each encoded sample (labels marking the scored answer tokens): the sum of their
    log-probabilities, and whether greedy decoding would have produced every one of them."""
    from photon.adapters.qwen_inputs import model_inputs

    model = loaded.model
    device = next(model.parameters()).device
    batch = loaded.encoder.collate(list(encoded))
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_inputs(batch).items()}
    with torch.no_grad():
        result = model(**inputs)
    last = model._photon.last
    # Pruned rows keep their labels where their tokens went: the forward records them aligned
    # with its logits; otherwise the logits cover the trailing window of the given labels.
    labels = last.labels if last is not None and last.labels is not None else inputs["labels"]
    labels = labels[:, -result.logits.shape[1]:]
    logits = result.logits[:, :-1].float()
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    hits = logits.argmax(-1) == targets
    out = []
    for row in range(targets.shape[0]):
        mine = scored[row]
        out.append((float(logprobs[row][mine].sum()), bool(hits[row][mine].all())))
    return out


def choose_answer(loaded, sample, choices: Sequence[str]) -> tuple[str, dict[str, float]]:
    """The allowed answer the model finds likeliest for `sample` (a one-turn question; any
    assistant turn it carries is replaced by each choice in turn), and every choice's score."""
    if not choices:
        raise ValueError(f"record {sample.id}: no allowed answers to choose from")
    question = [m for m in sample.messages if m["role"] != "assistant"]
    encoded = [
        score_answer_only(loaded.encoder.encode(
            dataclasses.replace(sample, messages=[*question, {"role": "assistant", "content": choice}]), train=True))
        for choice in choices
    ]
    scores = {choice: logprob for choice, (logprob, _) in zip(choices, continuation_logprobs(loaded, encoded))}
    return max(scores, key=scores.get), scores
