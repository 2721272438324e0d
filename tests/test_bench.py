"""photon bench: analytic FLOPs against the real modules, and the command end to end."""

import json
import math
import re
import statistics
from pathlib import Path

import pytest
import torch

from photon.bench import flops
from photon.bench.models import size_config
from photon.bench.sweep import TIME_PHASES
from photon.cli import main

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def meta_model(size):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    config = size_config(size)
    make = Qwen3VLForConditionalGeneration if config.model_type == "qwen3_vl" else Qwen2_5_VLForConditionalGeneration
    with torch.device("meta"):
        return config, make(config)


def weights(module):
    return sum(p.numel() for name, p in module.named_parameters() if name.endswith("weight") and p.ndim == 2)


@pytest.mark.parametrize("size", ["tiny", "3b", "7b", "qwen3-tiny", "qwen3-small", "qwen3-2b"])
def test_linear_flops_are_twice_the_weights_a_token_meets(size):
    # GQA shows here: k_proj and v_proj of the real layers are Hkv/Hq the size of q_proj.
    # Qwen3-VL: an ungated ViT MLP, and DeepStack mergers beside the final one.
    config, model = meta_model(size)
    dims = flops.dims_of(config)
    layer = model.model.language_model.layers[0]
    assert flops.layer_linear(dims.text, 1) == 2 * weights(layer)
    visual = model.model.visual
    per_patch = visual.patch_embed.proj.weight.numel() + dims.vision.depth * weights(visual.blocks[0])
    mergers = weights(visual.merger) + sum(weights(m) for m in getattr(visual, "deepstack_merger_list", []))
    assert flops.vision_linear(dims.vision, 8) == 2 * 8 * per_patch + 2 * 2 * mergers


@pytest.mark.parametrize("size", ["tiny", "3b", "qwen3-2b"])
def test_decode_bytes_are_the_decoder_matrices_and_lm_head_plus_the_cache(size):
    config, model = meta_model(size)
    dims = flops.dims_of(config)
    text = model.model.language_model
    matrices = sum(weights(layer) for layer in text.layers) + model.lm_head.weight.numel()
    assert flops.decoder_weight_elements(dims.text) == matrices
    shape = flops.SampleShape(tokens=100, visual=80, instruction=5, kept=8, frames=())
    per_token = 2 * dims.text.kv_heads * dims.text.head_dim * 2  # keys and values, bf16
    # stock, 3 new tokens: the two decode steps read the cache at 100 and 101 tokens
    stock = flops.decode_bytes(dims, [shape], None, True, 3, 2)
    assert stock == matrices * 2 + dims.text.layers * per_token * 100.5
    pruned = flops.decode_bytes(dims, [shape], 1, True, 3, 2)
    assert pruned == matrices * 2 + dims.text.layers * per_token * 28.5


def test_qwen3_vl_attends_over_whole_frames():
    config, _ = meta_model("qwen3-2b")
    dims = flops.dims_of(config)
    assert dims.vision.window_size is None and dims.vision.mergers == 4
    assert flops.window_sizes(dims.vision, 12, 20) == [240]
    # every one of the 24 blocks attends over each (h*w)^2 frame: 4 * hidden * blocks * pairs
    assert flops.vision_attention(dims.vision, ((12, 20),)) == 4 * 1024 * 24 * 240**2


def test_prefill_flops_by_hand():
    # hidden 4, 2 query heads and 1 key/value head of size 2, MLP 8, vocab 10, 2 layers.
    # Layer 0 (<= selection layer) on 4 tokens: linear 2*4*(16+8+8+96)... per token 2*(4*4 + 4*2*2 + 4*4 + 3*4*8) = 288,
    # so 1152; causal pairs 10 -> attention 4*10*2*2 = 160. Layer 1 on 2 kept tokens: 576 + 4*3*4 = 48.
    # LM head on one position: 2*4*10 = 80. Total 2016.
    t = flops.TextDims(hidden=4, layers=2, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10)
    dims = flops.ModelDims(text=t, vision=None)
    assert flops.prefill(dims, tokens=4, kept_tokens=2, layer=0, logits=1) == 2016
    # A decode step with caches of 2 (layer 0) and 2 (layer 1): per layer 288 + 4*3*4 = 336; + 80.
    assert flops.decode_step(dims, [2, 2]) == 2 * 336 + 80


@pytest.mark.parametrize("h, w", [(16, 16), (12, 20), (6, 6)])
def test_window_sizes_match_qwens_window_partition(h, w):
    from transformers.vision_utils import get_vision_window_index

    config, _ = meta_model("tiny")
    dims = flops.dims_of(config)
    _, cu = get_vision_window_index(torch.tensor([[1, h, w]]), spatial_merge_size=2, window_size=112, patch_size=14)
    lengths = [int(b - a) for a, b in zip(cu[:-1], cu[1:]) if b > a]
    assert sorted(flops.window_sizes(dims.vision, h, w)) == sorted(lengths)


def _documented_fields():
    return set(re.findall(r"`([a-z_0-9]+)`", DOCS.read_text()))


def test_bench_command_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--visual-tokens", "16", "--batch", "2", "--pruners", "photon", "--keep", "0.5",
            "--repeats", "1", "--warmup", "0", "--max-new-tokens", "2", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    labels = [c["label"] for c in result["configurations"]]
    assert labels == ["stock", "photon@0.5"]
    assert all(label in printed for label in labels[1:])
    assert "prefill, where the time goes" in printed

    documented = _documented_fields()

    def keys(value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield k
                if k not in ("dims", "machine", "command_options"):
                    yield from keys(v)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                yield from keys(item)

    missing = {k for k in keys(result) if not re.fullmatch(r"[a-z_0-9]+", k) or k not in documented}
    assert not missing, f"docs/benchmarks.md does not document {sorted(missing)}"

    stock, pruned = result["configurations"][0], result["configurations"][1:]
    statistic = result["command_options"]["statistic"]
    for c in pruned:  # each time ratio: the median of this configuration's time over stock's within each round
        for name, timing in c["times"].items():
            per_round = [a / b for a, b in zip(timing["samples"], stock["times"][name]["samples"])]
            assert c["ratio_spread"][name]["samples"] == pytest.approx(per_round), name
            assert c["ratios"][name] == pytest.approx(statistics.median(per_round)), name
            assert c["ratio_spread"][name]["min"] <= c["ratios"][name] <= c["ratio_spread"][name]["max"]
        assert c["ratios"]["prefill_s"] == pytest.approx(c["times"]["prefill_s"][statistic] / stock["times"]["prefill_s"][statistic])
        assert c["ratios"]["kv_bytes_after_prefill"] == pytest.approx(c["kv_cache"]["after_prefill"] / stock["kv_cache"]["after_prefill"])
    for c in pruned:
        assert c["kept_tokens"] == [8, 8]  # half of 16 visual tokens per sample
        assert c["ratios"]["kept_tokens"] == c["ideal_ratios"]["kept_tokens"] == 0.5
        assert c["ideal_ratios"]["vision_s"] == 1
        assert 0 < c["ideal_ratios"]["prefill_s"] < 1 and 0 < c["ideal_ratios"]["train_step_s"] < 1
        assert c["flops"]["selection"] > 0
        assert 0 < c["prefill_parts"]["layers_s"] < c["times"]["prefill_s"]["min"] and 0 < c["ideal_ratios"]["prefill_floor"]
        for name, timing in c["times"].items():
            assert timing["median"] > 0 and len(timing["samples"]) == 1, name
        for phase in ("generate", "train"):
            assert c["memory"][phase]["peak"] >= c["memory"][phase]["base"] > 0
    assert result["input"]["visual_tokens_per_sample"] == [16, 16]


@pytest.mark.parametrize("argv, message", [
    (["--keep", "0"], "keep ratios"),
    (["--pruners", "nope"], "unknown pruner"),
    (["--size", "tiny", "--backbone", "qwen2.5-vl-tiny"], "not both"),
    (["--visual-tokens", "0"], "--visual-tokens"),
    (["--visual-tokens", "16,0"], "--visual-tokens"),
    (["--visual-tokens", "16,32", "--size-time-limit", "0"], "--size-time-limit must be > 0"),
    (["--visual-tokens", "16,32", "--paper-table"], "--paper-table measures one volume"),
])
def test_bench_rejects_bad_options_clearly(argv, message, capsys):
    assert main(["bench", "--no-memory", *argv]) == 2
    assert message in capsys.readouterr().err


def test_flops_refuse_a_backbone_they_do_not_model():
    from types import SimpleNamespace

    from photon.core.errors import PhotonError

    with pytest.raises(PhotonError, match="llava"):
        flops.dims_of(SimpleNamespace(model_type="llava"))


def test_bench_measures_qwen3_vl_with_every_baseline(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--size", "qwen3-tiny", "--visual-tokens", "16", "--batch", "2", "--keep", "0.5", "--repeats", "1",
            "--warmup", "0", "--max-new-tokens", "2", "--no-memory", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["model"]["description"].startswith("qwen3-vl qwen3-tiny")
    assert result["model"]["dims"]["vision"]["mergers"] == 4  # the final merger and 3 DeepStack ones
    configs = result["configurations"]
    assert [c["label"] for c in configs] == ["stock", "photon@0.5", "random@0.5", "fastv@0.5", "visionzip@0.5", "divprune@0.5"]
    for c in configs[1:]:
        assert c["kept_tokens"] == [8, 8]
        assert 0 < c["ideal_ratios"]["prefill_s"] < 1
    assert {c["label"]: c["layer"] for c in configs}["visionzip@0.5"] == -1


def test_the_stock_training_step_computes_the_same_loss_as_an_attached_model():
    import photon
    from photon.bench import workload
    from photon.bench.clock import training_loss
    from photon.bench.models import ModelSpec, build_model

    model, encoder = build_model(ModelSpec(size="tiny"))
    _, train = workload.batches(encoder, 64, 2)
    with torch.no_grad():
        stock = training_loss(model, train)
        full = model(**train).loss  # the bare model's own loss, logits at every position
        photon.attach(model, mode="zero_shot", keep="all")
        attached = training_loss(model, train)
    torch.testing.assert_close(stock, full)
    torch.testing.assert_close(stock, attached)


def test_unsynchronised_call_times_read_cuda_events_in_seconds(monkeypatch):
    """On CUDA, CallTimes(sync=False) records events and never synchronises the device; its
    durations are the events' elapsed times (milliseconds in torch) in seconds. CI has no GPU:
    torch.cuda.Event is stood in for by a clock with the same methods."""
    from torch import nn

    from photon.bench import clock

    ticks = iter(range(0, 1000, 250))  # each record() reads the next tick, in milliseconds
    waited = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at = None

        def record(self):
            self.at = next(ticks)

        def synchronize(self):
            waited.append(self)

        def elapsed_time(self, end):
            return float(end.at - self.at)

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(clock, "synchronize", lambda device: pytest.fail("synchronised the device"))
    layer = nn.Identity()
    times = clock.CallTimes(layer, torch.device("cuda"), limit=1, sync=False)
    layer(torch.zeros(1))
    layer(torch.zeros(1))  # past the limit: not timed
    assert times.durations == [0.25] and len(waited) == 1


@pytest.mark.parametrize("cache", ["evict_all", "keep_early"])
def test_kv_cache_bytes_follow_the_kept_tokens(cache):
    import photon
    from photon.bench import flops, workload
    from photon.bench.clock import cache_bytes, time_generate
    from photon.bench.models import ModelSpec, build_model

    model, encoder = build_model(ModelSpec(size="tiny"))
    prompt, _ = workload.batches(encoder, 64, 2)
    dims = flops.dims_of(model.config)
    stock = time_generate(model, model.model.visual, prompt, 3)
    photon.attach(model, mode="zero_shot", keep_ratio=0.25, cache=cache)
    pruned = time_generate(model, model.model.visual, prompt, 3)
    kept = [r["n_kept"] for r in photon.last_selection(model)]
    tokens = int(prompt["attention_mask"][0].sum())
    visual = int((prompt["mm_token_type_ids"][0] > 0).sum())
    shapes = [flops.SampleShape(tokens=tokens, visual=visual, instruction=0, kept=k, frames=()) for k in kept]
    per_token = 2 * dims.text.kv_heads * dims.text.head_dim * 4
    assert stock["kv_bytes_after_prefill"] == 2 * tokens * dims.text.layers * per_token
    assert stock["kv_bytes_final"] == 2 * (tokens + 2) * dims.text.layers * per_token
    for timed in (stock, pruned):  # the LM head's read is part of the prefill, timed inside it
        assert 0 < timed["prefill_head_s"] < timed["prefill_s"]
        assert timed["prefill_layers_s"] != timed["prefill_layers_s"]  # NaN: no layers were given
    timed = time_generate(model, model.model.visual, prompt, 3, model.model.language_model.layers)
    # the decoder layers' first calls (the prefill's) sit inside the prefill, beside the LM head
    assert 0 < timed["prefill_layers_s"] < timed["prefill_s"] - timed["prefill_head_s"]
    for key, new in (("kv_bytes_after_prefill", 0), ("kv_bytes_final", 2)):
        ideal = flops.kv_cache_bytes(dims, shapes, 1, cache == "evict_all", new, 4)
        assert pruned[key] == ideal
    if cache == "keep_early":
        assert pruned["kv_bytes_after_prefill"] > flops.kv_cache_bytes(dims, shapes, 1, True, 0, 4)
    assert cache_bytes(None) == 0


def test_bench_attaches_each_pruner_at_the_layer_it_is_given():
    import photon
    from photon.bench.harness import Configuration, attach
    from photon.bench.models import ModelSpec, build_model

    model, _ = build_model(ModelSpec(size="tiny"), with_encoder=False)
    for pruner, layer, expected in (("photon", 2, 2), ("fastv", 3, 3), ("photon", None, 1)):
        attach(model, Configuration(pruner, 0.5), layer)
        try:
            assert model._photon.layer == expected  # None: the pruner's default, floor(8 / 4) - 1
        finally:
            photon.detach(model)


def _phase_result(times, flop, decode_bytes, head_flops=2.0):
    return {"times": {name: {"min": t} for name, t in times.items()},
            "flops": {"vision": flop[0], "prefill": flop[1], "prefill_head": head_flops, "decode": flop[2],
                      "generate": sum(flop), "train": 1.0},
            "kept_tokens": [1], "visual_tokens": [1], "keep_ratio": None, "pruner": None, "decode_bytes": decode_bytes,
            "kv_cache": {"after_prefill": 1, "final": 1, "ideal_after_prefill": 1, "ideal_final": 1}}


STOCK_TIMES = {"vision_s": 1.0, "prefill_s": 6.0, "prefill_head_s": 2.0, "decode_s_per_token": 0.5, "generate_s": 10.0,
               "train_step_s": 1.0, "prefill_layers_s": float("nan"), "prefill_outside_layers_s": float("nan")}  # layers untimed


def test_prefill_floor_is_stocks_time_outside_its_layers_plus_the_configurations_layers():
    from photon.bench.harness import _add_ratios

    stock = _phase_result({**STOCK_TIMES, "prefill_layers_s": 3.5, "prefill_outside_layers_s": 2.5}, (10.0, 102.0, 1.0), 1000.0)
    pruned = _phase_result({**STOCK_TIMES, "prefill_s": 4.0, "prefill_layers_s": 1.0, "prefill_outside_layers_s": 3.0},
                           (10.0, 27.0, 0.5), 900.0)
    _add_ratios([stock, pruned], "min")
    parts = pruned["prefill_parts"]
    # stock's 2.5 s outside its layers plus these layers' 1 s, over stock's 6 s
    assert pruned["ideal_ratios"]["prefill_floor"] == parts["floor"] == pytest.approx(3.5 / 6.0)
    assert parts["own_s"] == pytest.approx(0.5) and parts["other_s"] == pytest.approx(1.0)  # 3 s outside, 2 s of it the head
    assert (parts["layers_s"], parts["head_s"]) == (1.0, 2.0)
    assert stock["prefill_parts"]["own_s"] == 0 and stock["ideal_ratios"]["prefill_floor"] == 1.0
    stock = _phase_result(STOCK_TIMES, (10.0, 102.0, 1.0), 1000.0)
    _add_ratios([stock], "min")  # layers untimed (NaN): no parts, no floor
    assert stock["prefill_parts"] is None and stock["ideal_ratios"]["prefill_floor"] is None


def test_prefill_by_part_keeps_the_lm_heads_measured_time_and_scales_the_rest_by_its_flops():
    from photon.bench.harness import _add_ratios

    stock = _phase_result(STOCK_TIMES, (10.0, 102.0, 1.0), 1000.0)
    pruned = _phase_result(STOCK_TIMES, (10.0, 27.0, 0.5), 900.0)  # the rest: 25 of 100 FLOPs
    _add_ratios([stock, pruned], "min")
    # the head's 2 s at 1.0, the other 4 s at 0.25, over stock's 6 s
    assert pruned["ideal_ratios"]["prefill_by_part"] == pytest.approx((2.0 + 1.0) / 6.0)
    assert pruned["ideal_ratios"]["prefill_s"] == pytest.approx(27.0 / 102.0)
    assert stock["ideal_ratios"]["prefill_by_part"] == pytest.approx(1.0)
    no_head = {**STOCK_TIMES, "prefill_head_s": float("nan")}
    stock, pruned = _phase_result(no_head, (10.0, 102.0, 1.0), 1000.0), _phase_result(no_head, (10.0, 27.0, 0.5), 900.0)
    _add_ratios([stock, pruned], "min")
    assert pruned["ideal_ratios"]["prefill_by_part"] is None and pruned["ideal_ratios"]["generate_by_phase"] is None


def test_generate_by_phase_weighs_each_phase_by_stocks_time_at_its_own_ideal():
    from photon.bench.harness import _add_ratios

    stock = _phase_result(STOCK_TIMES, (10.0, 102.0, 1.0), 1000.0)
    pruned = _phase_result(STOCK_TIMES, (10.0, 27.0, 0.5), 900.0)
    _add_ratios([stock, pruned], "min")
    # vision 1 s at 1.0, prefill 6 s at its by-part 0.5, the other 3 s (decoding) at the bytes ratio 0.9
    assert pruned["ideal_ratios"]["generate_by_phase"] == pytest.approx((1.0 + 3.0 + 2.7) / 10.0)
    assert stock["ideal_ratios"]["generate_by_phase"] == pytest.approx(1.0)


# -- sweeps over the visual tokens ---------------------------------------------------------------
def test_round_ratios_are_within_round_and_summarised_by_their_median():
    from photon.bench.harness import round_ratios

    spread = round_ratios([2.0, 3.0, 9.0, 1.0, 4.0], [4.0, 4.0, 10.0, 1.0, 5.0])
    assert spread["samples"] == [0.5, 0.75, 0.9, 1.0, 0.8]
    assert (spread["median"], spread["min"], spread["max"]) == (0.8, 0.5, 1.0)
    assert round_ratios([1.0], [0.0]) is None


def test_growth_slopes_and_projections():
    from photon.bench.sweep import end_slope, skip_reason, slope

    xs = [1024, 2048, 4096, 8192]
    assert slope(xs, [3 * x**1.5 for x in xs]) == pytest.approx(1.5)
    assert end_slope(xs, [1.0, 3.0, 2.0, 8.0]) == pytest.approx(1.0)
    measured = [{"visual_tokens": 1024, "wall_s": 10.0, "configurations": [{"memory": {"generate": {"peak": 2**30}, "train": {"peak": 2**30}}}]}]
    assert skip_reason(2048, measured, 25.0, None) is None  # linear from one size: 20 s
    assert "projected 40 s" in skip_reason(4096, measured, 25.0, None)
    measured.append({"visual_tokens": 2048, "wall_s": 40.0, "configurations": [{"memory": {"generate": {"peak": 2 * 2**30}, "train": {"peak": 2**30}}}]})
    reason = skip_reason(4096, measured, 100.0, None)  # measured growth: tokens^2, 160 s
    assert reason.startswith("projected 160 s") and "tokens^2.00" in reason
    memory = skip_reason(8192, measured, None, 6 * 2**30)  # 2 GiB growing linearly to 8 GiB > 0.9 x 6 GiB
    assert "projected stock peak 8.0 GiB" in memory and "6.0 GiB free" in memory


def _entry(n, prefill_photon, ideal, stock_prefill):
    def config(label, pruner, prefill, ideal_by_part):
        times = {key: {"min": 1.0, "median": 1.0, "samples": [1.0]} for key, _ in TIME_PHASES}
        times["prefill_s"] = {"min": prefill, "median": prefill, "samples": [prefill]}
        return {"label": label, "pruner": pruner, "times": times, "ratios": {"prefill_s": prefill / stock_prefill},
                "ideal_ratios": {"prefill_by_part": ideal_by_part}}

    return {"visual_tokens": n, "configurations": [config("stock", None, stock_prefill, 1.0),
                                                   config("photon@0.1", "photon", prefill_photon, ideal)]}


def test_sweep_targets_hold_or_miss_on_the_numbers():
    from photon.bench.sweep import growth_exponents, sweep_targets

    entries = [_entry(2048, 0.5, 0.30, 1.0), _entry(4096, 0.66, 0.31, 2.2), _entry(8192, 2.0, 0.3, 5.0),
               {"visual_tokens": 16384, "skipped": "projected 99 s"}]
    growth = growth_exponents(entries, "min")
    assert growth["stock"]["prefill_s"]["ends"] == pytest.approx(math.log(5) / math.log(4))
    within = next(t for t in sweep_targets(entries, growth) if "within" in t["target"])
    assert within["holds"] is False and "4096: 0.30 vs 0.31" in within["detail"] and "8192: 0.40 vs 0.30 (1.33x)" in within["detail"]
    slower = next(t for t in sweep_targets(entries, growth) if "more slowly" in t["target"])
    assert slower["holds"] is True
    at_16k = next(t for t in sweep_targets(entries, growth) if "16384" in t["target"])
    assert at_16k["holds"] is None and "not measured at 16384" in at_16k["detail"]


def test_bench_sweep_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    argv = ["bench", "--visual-tokens", "16,32,4096", "--batch", "1", "--pruners", "photon", "--keep", "0.5", "--repeats", "5",
            "--warmup", "0", "--max-new-tokens", "2", "--no-memory", "--size-time-limit", "60", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    sizes = [entry["visual_tokens"] for entry in result["sweep"]]
    assert sizes == [16, 32, 4096]
    measured = [e for e in result["sweep"] if "configurations" in e]
    got = [e["input"]["visual_tokens_per_sample"][0] for e in measured]  # about the size asked for (whole patch grids)
    assert got[0] == 16 and 32 <= got[1] <= 40
    skipped = result["sweep"][2]
    assert "exceeds the 60 s limit per size (--size-time-limit)" in skipped["skipped"] and "skipped" in printed
    for entry in measured:
        photon_row = entry["configurations"][1]
        assert len(photon_row["ratio_spread"]["prefill_s"]["samples"]) == 5  # five interleaved rounds
    assert result["growth"]["stock"]["prefill_s"]["fit"] is not None
    assert "growth exponents" in printed and "targets:" in printed
    plot = Path(result["plot"])
    assert plot == out.with_suffix(".png") and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    documented = _documented_fields()

    def keys(value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield k
                if k not in ("dims", "machine", "command_options", "configurations", "growth"):
                    yield from keys(v)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                yield from keys(item)

    missing = {k for k in keys(result) if k not in documented}
    assert not missing, f"docs/benchmarks.md does not document {sorted(missing)}"


def test_a_stopped_sweep_keeps_the_sizes_it_finished(tmp_path, monkeypatch):
    import photon.bench.sweep as sweep

    out = tmp_path / "sweep.json"
    real, calls = sweep.run_bench, []

    def stopped_at_the_second_size(options, **kwargs):
        calls.append(options.visual_tokens)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a person stopping an hour-long sweep
        return real(options, **kwargs)

    monkeypatch.setattr(sweep, "run_bench", stopped_at_the_second_size)
    argv = ["bench", "--visual-tokens", "16,32,64", "--batch", "1", "--pruners", "photon", "--keep", "0.5", "--repeats", "1",
            "--warmup", "0", "--max-new-tokens", "2", "--no-memory", "--json", str(out)]
    assert main(argv) == 130  # "photon bench: interrupted"
    kept = json.loads(out.read_text())
    assert [e["visual_tokens"] for e in kept["sweep"]] == [16, 32, 64]
    assert "configurations" in kept["sweep"][0]
    assert [e["skipped"] for e in kept["sweep"][1:]] == ["not reached (the sweep was still running)"] * 2
    assert kept["growth"]["stock"]["prefill_s"]["fit"] is None  # one size: no exponent yet
