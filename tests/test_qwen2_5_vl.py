"""Qwen2.5-VL adapter: parity with stock, equality with a stock-only reference when pruning,
ragged batches, decode with pruned caches, training through SGP, bad input."""

import pytest
import torch

import photon
from photon.adapters.qwen2_5_vl import load_tiny
from photon.adapters.qwen_inputs import model_inputs
from photon.core import compat
from photon.core import sgp as sgp_module
from photon.core.api import runtime_of
from photon.core.errors import PhotonError
from photon.core.losses import answer_window
from photon.core.schedule import BatchPlan, Stage
from tests.reference import capture_text_inputs, reference_greedy, reference_logits

from tests.conftest import video_sample


def tiny(attn="sdpa", **kw):
    # A wider init than the default 0.02 makes greedy decoding vary, so token equality means something.
    return load_tiny(attn_implementation=attn, initializer_range=0.3, **kw)


def batch_for(loaded, samples, train=False):
    batch = loaded.encoder.collate([loaded.encoder.encode(s, train=train) for s in samples])
    inputs = model_inputs(batch)
    if not train:
        inputs.pop("labels")
    return inputs


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_keep_all_equals_stock_logits_and_generate(attn, ragged_samples):
    loaded = tiny(attn)
    model = loaded.model
    inputs = batch_for(loaded, ragged_samples)
    with torch.no_grad():
        stock_logits = model(**inputs).logits
        stock_tokens = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    photon.attach(model, mode="zero_shot", keep="all")
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(logits, stock_logits)
    assert torch.equal(tokens, stock_tokens)
    records = photon.last_selection(model)
    assert [r["n_visual"] for r in records] == [12, 8, 12]
    assert all(0 < r["selected"] < r["n_visual"] == r["n_kept"] for r in records)  # a selection ran, nothing was dropped
    photon.detach(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock_logits)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_pruned_prefill_equals_reference_at_kept_positions(attn, ragged_samples):
    loaded = tiny(attn)
    model = loaded.model
    inputs = batch_for(loaded, ragged_samples)
    text_model = model.model.language_model
    captured = capture_text_inputs(model, text_model, inputs)
    photon.attach(model, mode="zero_shot", layer=2)
    with torch.no_grad():
        out = model(**inputs)
    info = runtime_of(model).last
    assert info.pruned
    keep = info.keep
    counts = [r["n_kept"] for r in photon.last_selection(model)]
    assert len(set(counts)) > 1, counts  # ragged keep counts
    ref = reference_logits(model, text_model, captured, keep, 2, evict_all=True, prompt_len=keep.shape[1])
    for b in range(keep.shape[0]):
        kept_positions = keep[b].nonzero().squeeze(1)
        packed = out.logits[b, info.valid[b]]
        assert packed.shape[0] == kept_positions.numel()
        torch.testing.assert_close(packed, ref[b, kept_positions], rtol=1e-4, atol=2e-5)
    assert out.logits.shape[1] == int(keep.sum(1).max())


@pytest.mark.parametrize("cache", ["evict_all", "keep_early"])
def test_decode_with_pruned_cache_equals_reference(cache, ragged_samples):
    loaded = tiny("eager")
    model = loaded.model
    inputs = batch_for(loaded, ragged_samples)
    prompt_len = inputs["input_ids"].shape[1]
    photon.attach(model, mode="zero_shot", layer=1, cache=cache)
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    keep = runtime_of(model).last.keep
    kv = model.model.language_model  # caches of layers 0..1 were reduced too when evict_all
    photon.detach(model)
    full = dict(inputs)
    full["input_ids"] = gen.sequences
    full["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(gen.sequences[:, prompt_len:])], 1)
    full["mm_token_type_ids"] = torch.cat(
        [inputs["mm_token_type_ids"], torch.zeros_like(gen.sequences[:, prompt_len:], dtype=torch.int)], 1
    )
    captured = capture_text_inputs(model, kv, full)
    ref = reference_logits(model, kv, captured, keep, 1, evict_all=cache == "evict_all", prompt_len=prompt_len)
    for step, logits in enumerate(gen.logits):
        torch.testing.assert_close(logits, ref[:, prompt_len - 1 + step], rtol=1e-4, atol=1e-4)


def test_ragged_batch_equals_per_sample_runs(ragged_samples):
    loaded = tiny("sdpa")
    model = loaded.model
    photon.attach(model, mode="zero_shot")
    inputs = batch_for(loaded, ragged_samples)
    with torch.no_grad():
        batched = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        batched_records = photon.last_selection(model)
        for b, sample in enumerate(ragged_samples):
            single = batch_for(loaded, [sample])
            tokens = model.generate(**single, max_new_tokens=4, do_sample=False)
            assert torch.equal(tokens[0, -4:], batched[b, -4:])
            assert photon.last_selection(model)[0]["keep"] == batched_records[b]["keep"]


def test_sampling_generate_with_keep_all_matches_stock(ragged_samples):
    loaded = tiny("sdpa")
    model = loaded.model
    inputs = batch_for(loaded, ragged_samples)
    torch.manual_seed(7)
    stock = model.generate(**inputs, max_new_tokens=5, do_sample=True, top_k=50)
    photon.attach(model, mode="zero_shot", keep="all")
    torch.manual_seed(7)
    assert torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=True, top_k=50), stock)
    photon.attach(model, mode="zero_shot", keep_ratio=0.25)
    torch.manual_seed(7)
    pruned = model.generate(**inputs, max_new_tokens=5, do_sample=True, top_k=50)
    torch.manual_seed(7)
    assert torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=True, top_k=50), pruned)  # seeded: reproducible
    assert [r["n_kept"] for r in photon.last_selection(model)] == [3, 2, 3]
    greedy = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    keep, layer = runtime_of(model).last.keep, runtime_of(model).layer
    photon.detach(model)
    expected = reference_greedy(model, model.model.language_model, inputs, keep, layer, evict_all=True, max_new_tokens=5)
    assert torch.equal(greedy[:, -5:], expected)
    assert not torch.equal(expected, stock[:, -5:])  # pruning changed the answer: the comparison can fail


def test_prompt_without_visual_tokens_runs_unpruned():
    loaded = tiny()
    model = loaded.model
    ids = loaded.encoder.tokenizer("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt").input_ids
    with torch.no_grad():
        stock = model(input_ids=ids).logits
    photon.attach(model, mode="zero_shot")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, stock)
    assert photon.last_selection(model) == []


def test_no_instruction_tokens_keeps_every_visual_token():
    loaded = tiny()
    model = loaded.model
    photon.attach(model, mode="zero_shot")
    sample = video_sample(0, 2, 56, 56, "")
    with torch.no_grad():
        model(**batch_for(loaded, [sample]))
    record = photon.last_selection(model)[0]
    assert record["fallback"] == "no instruction tokens"
    assert record["n_kept"] == record["n_visual"] == 4


def test_placeholder_count_not_matching_the_grid_is_a_clear_error():
    loaded = tiny()
    model = loaded.model
    photon.attach(model, mode="zero_shot")
    inputs = batch_for(loaded, [video_sample(0, 2, 56, 56, "Where?")])
    ids = inputs["input_ids"]
    video = ids == model.config.video_token_id
    first = video.nonzero()[0]
    ids[first[0], first[1]] = loaded.encoder.tokenizer.convert_tokens_to_ids("a")
    inputs["mm_token_type_ids"][first[0], first[1]] = 0
    with pytest.raises(PhotonError, match="placeholder|do not match"):
        model(**inputs)


def test_unknown_override_and_bad_layer_are_clear_errors():
    model = tiny().model
    with pytest.raises(PhotonError, match="unknown override"):
        photon.attach(model, mode="zero_shot", keep_fraction=0.3)
    with pytest.raises(PhotonError, match=r"layer=7: outside this qwen2.5-vl model.s 8 decoder layers; choose -1\.\.6"):
        photon.attach(model, mode="zero_shot", layer=7)


def _train_step(model, inputs, plan):
    runtime_of(model).plan = plan
    model.train()
    out = model(**inputs)
    return out, runtime_of(model).last


@pytest.mark.parametrize("checkpointing", [False, True])
def test_hard_stage_training_step_reaches_the_predictor_only_through_sgp(checkpointing, ragged_samples, monkeypatch):
    loaded = tiny()
    model = loaded.model
    photon.attach(model, mode="trained", theta=None)
    if checkpointing:
        compat.enable_checkpointing(model)
    inputs = batch_for(loaded, ragged_samples, train=True)
    out, info = _train_step(model, inputs, BatchPlan(step=9000, stage=Stage.HARD))
    assert torch.isfinite(out.loss) and info.pruned
    assert info.labels.shape == out.logits.shape[:2]
    out.loss.backward()
    grads = [p.grad for p in model.photon_pruner.predictor.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # With the surrogate silenced, nothing else carries gradient to the predictor.
    model.zero_grad()
    monkeypatch.setattr(sgp_module, "surrogate_q_grad", lambda x, g, q, *a, **k: torch.zeros_like(q))
    out, _ = _train_step(model, inputs, BatchPlan(step=9000, stage=Stage.HARD))
    out.loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.photon_pruner.predictor.parameters())


def test_soft_stage_scales_visual_rows_and_trains_the_predictor(ragged_samples):
    loaded = tiny()
    model = loaded.model
    photon.attach(model, mode="trained")
    inputs = batch_for(loaded, ragged_samples, train=True)
    out, info = _train_step(model, inputs, BatchPlan(step=5000, stage=Stage.SOFT))
    assert not info.pruned and info.q.shape[1] == inputs["input_ids"].shape[1]
    # logits only for the answer window: from the position before the earliest label to the end
    assert out.logits.shape[1] == answer_window(inputs["labels"]) < inputs["input_ids"].shape[1]
    assert info.q.requires_grad
    out.loss.backward()
    assert model.photon_pruner.predictor.mlp[2].bias.grad.abs().item() > 0


def test_full_stage_is_the_stock_forward(ragged_samples):
    loaded = tiny()
    model = loaded.model
    inputs = batch_for(loaded, ragged_samples, train=True)
    model.train()
    stock_loss = model(**inputs).loss
    photon.attach(model, mode="trained")
    out, info = _train_step(model, inputs, BatchPlan(step=0, stage=Stage.FULL))
    assert info is None
    torch.testing.assert_close(out.loss, stock_loss)


def test_flip_batch_keeps_the_complement(ragged_samples):
    loaded = tiny()
    model = loaded.model
    photon.attach(model, mode="zero_shot")
    inputs = batch_for(loaded, ragged_samples)
    with torch.no_grad():
        model(**inputs)
    normal = [r["keep"] for r in photon.last_selection(model)]
    runtime_of(model).plan = BatchPlan(step=9500, stage=Stage.FLIP, flip=True)
    with torch.no_grad():
        model(**inputs)
    flipped = [r["keep"] for r in photon.last_selection(model)]
    for a, b in zip(normal, flipped):
        assert all(x != y for x, y in zip(a, b))


@pytest.mark.parametrize("form", ["mask", "indices"])
def test_logits_to_keep_positions_are_found_through_the_keep_index(form, ragged_samples):
    """transformers' logits_to_keep may be a tensor of prompt positions (ms-swift's trainer passes the
    loss positions): on a pruned prompt each requested row is the stock-only reference's at that position."""
    loaded = tiny("sdpa")
    model = loaded.model
    inputs = batch_for(loaded, ragged_samples, train=True)
    labels = inputs.pop("labels")
    text_model = model.model.language_model
    captured = capture_text_inputs(model, text_model, inputs)
    photon.attach(model, mode="zero_shot", layer=2, keep_ratio=0.3)
    wanted = torch.zeros(labels.shape[1], dtype=torch.bool)
    wanted[:-1] = (labels[:, 1:] != -100).any(0)  # the positions that predict a label
    requested = wanted if form == "mask" else wanted.nonzero().squeeze(1)
    with torch.no_grad():
        out = model(**inputs, logits_to_keep=requested)
    info = runtime_of(model).last
    assert info.pruned and bool((info.keep.sum(1) < labels.shape[1]).all())
    ref = reference_logits(model, text_model, captured, info.keep, 2, evict_all=True, prompt_len=labels.shape[1])
    assert out.logits.shape[:2] == (labels.shape[0], int(wanted.sum()))
    torch.testing.assert_close(out.logits, ref[:, wanted], rtol=1e-4, atol=2e-5)
    aligned = labels[:, torch.cat([torch.tensor([False]), wanted[:-1]])]  # the label each kept row predicts, shifted
    aligned = torch.nn.functional.pad(aligned, (1, 0), value=-100)[:, :-1]
    with torch.no_grad():
        loss = model(**inputs, labels=aligned, logits_to_keep=requested).loss
    torch.testing.assert_close(loss, answer_loss(ref[:, wanted], aligned))
    visual = (inputs["input_ids"][0] == model.config.video_token_id).nonzero().squeeze(1)
    dropped = visual[~info.keep[0, visual]][:1]
    with pytest.raises(PhotonError, match="visual positions Photon dropped"):
        model(**inputs, logits_to_keep=dropped)


def answer_loss(logits, labels):
    from photon.core.losses import causal_lm_loss

    return causal_lm_loss(logits, labels)


def test_a_prompt_embedded_by_a_later_pre_hook_is_still_pruned(ragged_samples):
    """Frameworks that turn input_ids into inputs_embeds in their own forward pre-hook (ms-swift's
    trainer) hand Photon no ids: the runtime's own first pre-hook still sees them, so the prompt is
    pruned exactly as when the ids are passed."""
    loaded = tiny("sdpa")
    model = loaded.model
    inputs = batch_for(loaded, ragged_samples)
    # The M-RoPE positions stock computes from the ids, handed over with the embeddings as ms-swift's
    # collator does (without ids, transformers before 5.17 falls back to 1-D positions).
    positions = capture_text_inputs(model, model.model.language_model, inputs)["position_ids"]
    photon.attach(model, mode="zero_shot", layer=2, keep_ratio=0.3)
    with torch.no_grad():
        direct = model(**inputs).logits
    kept = [r["n_kept"] for r in photon.last_selection(model)]

    def embed(module, args, kwargs):
        kwargs["inputs_embeds"] = module.get_input_embeddings()(kwargs.pop("input_ids"))
        kwargs["position_ids"] = positions
        return args, kwargs

    handle = model.register_forward_pre_hook(embed, with_kwargs=True)
    try:
        with torch.no_grad():
            hooked = model(**inputs).logits
    finally:
        handle.remove()
    assert runtime_of(model).last.pruned
    assert [r["n_kept"] for r in photon.last_selection(model)] == kept
    torch.testing.assert_close(hooked, direct, rtol=1e-5, atol=1e-6)
    assert runtime_of(model)._hooked_ids is None  # used once, not left for the next call
