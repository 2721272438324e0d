"""The transformers range: declared in one place, run by CI at its ends and at the tools' ceilings,
and every difference between releases answered by photon.core.compat from the installed code."""

import re
import tomllib
import warnings
from pathlib import Path

import pytest
import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import photon
from photon.commands import doctor
from photon.core import compat

ROOT = Path(__file__).resolve().parent.parent
CI_VERSIONS = ROOT / ".ci" / "transformers-versions"


def _ci_versions() -> list[Version]:
    lines = [line.split("#")[0].strip() for line in CI_VERSIONS.read_text().splitlines()]
    return [Version(line) for line in lines if line]


def _bounds(specifier: str) -> tuple[Version, Version]:
    floor = next(Version(s.version) for s in SpecifierSet(specifier) if s.operator == ">=")
    ceiling = next(Version(s.version) for s in SpecifierSet(specifier) if s.operator == "<")
    return floor, ceiling


def test_pyproject_declares_the_tested_range():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = [d for d in dependencies if re.match(r"transformers\b", d)]
    assert declared == [f"transformers{compat.TESTED_TRANSFORMERS}"]


def test_ci_runs_both_ends_of_the_range_and_the_tools_ceilings():
    versions = _ci_versions()
    floor, ceiling = _bounds(compat.TESTED_TRANSFORMERS)
    assert all(v in SpecifierSet(compat.TESTED_TRANSFORMERS) for v in versions), versions
    assert min(versions).release[:2] == floor.release[:2], "CI must run the floor's release"
    assert max(versions).release[:2] == (ceiling.major, ceiling.minor - 1), "the upper bound must be the newest release CI runs"
    minors = {v.release[:2] for v in versions}
    assert {(5, 19), (5, 22)} <= minors  # ms-swift 4.6's and vLLM 0.34's newest admitted releases
    # the matrix script reads the same file, and the compatibility table names the same releases
    assert "transformers-versions" in (ROOT / ".ci" / "transformers-matrix").read_text()
    table = (ROOT / "docs" / "serving.md").read_text()
    for version in versions:
        assert f"| {version} |" in table, f"docs/serving.md's compatibility table lacks {version}"


def test_an_untested_transformers_warns_once_naming_the_range(monkeypatch):
    monkeypatch.setattr(compat, "installed", lambda package: "5.99.0")
    compat.warn_if_untested.cache_clear()
    try:
        with pytest.warns(UserWarning, match=re.escape(f"tested with transformers{compat.TESTED_TRANSFORMERS}; this is transformers 5.99.0")):
            assert compat.warn_if_untested() is True
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compat.warn_if_untested()  # once per process
    finally:
        compat.warn_if_untested.cache_clear()
    monkeypatch.setattr(compat, "installed", lambda package: "5.20.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.warn_if_untested() is False
    compat.warn_if_untested.cache_clear()


def test_cache_keyword_follows_the_installed_decoder_layer():
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer

    import inspect

    names = set(inspect.signature(Qwen2_5_VLDecoderLayer.forward).parameters)
    expected = "cache" if "cache" in names else "past_key_values"
    assert compat.cache_keyword(Qwen2_5_VLDecoderLayer.forward) == expected


def test_pop_cache_takes_either_name_and_prefers_cache():
    new, old = object(), object()
    kwargs = {"cache": new, "past_key_values": old, "other": 1}
    assert compat.pop_cache(kwargs) is new and kwargs == {"other": 1}
    assert compat.pop_cache({"past_key_values": old}) is old
    assert compat.pop_cache({"cache": None, "past_key_values": old}) is old
    assert compat.peek_cache({"cache": new}) is new and compat.pop_cache({}) is None


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_query_key_after_rope_are_the_keys_the_layer_caches(family):
    """Whatever the release does with M-RoPE (sections merged by the rotary module from 5.17, by the
    attention before), the adapter's q/k are the layer's own: its keys equal what the layer writes
    into the KV cache."""
    from transformers.cache_utils import DynamicCache

    from photon.core.api import backbone_spec

    spec = backbone_spec("qwen2.5-vl-tiny" if family == "qwen2.5-vl" else "qwen3-vl-tiny")
    model = spec.load(None, initializer_range=0.3).model
    adapter = spec.make_adapter(model)
    text_model = adapter.text_model(model)
    hidden = torch.randn(2, 9, text_model.config.hidden_size)
    positions = torch.stack([torch.arange(9).expand(2, 9), torch.arange(9).flip(0).expand(2, 9), (torch.arange(9) % 3).expand(2, 9)])
    embeddings = text_model.rotary_emb(hidden, positions)
    layer = text_model.layers[1]
    cache = DynamicCache(config=text_model.config)
    with torch.no_grad():
        q, k = adapter.query_key(layer, hidden, embeddings)
        layer(hidden, attention_mask=None, position_embeddings=embeddings, position_ids=None, use_cache=True,
              **{compat.cache_keyword(layer): cache})
    assert q.shape == (2, text_model.config.num_attention_heads, 9, layer.self_attn.head_dim)
    torch.testing.assert_close(k, cache.layers[1].keys, rtol=1e-5, atol=1e-6)


def test_apply_text_rope_dispatches_on_the_rotary_layout():
    calls = []

    class Modeling:
        @staticmethod
        def apply_multimodal_rotary_pos_emb(q, k, cos, sin, section):
            calls.append(("sections", section))
            return q, k

        @staticmethod
        def apply_rotary_pos_emb(q, k, cos, sin):
            calls.append(("merged", None))
            return q, k

    q = k = torch.zeros(1, 2, 3, 4)
    compat.apply_text_rope(Modeling, q, k, torch.zeros(3, 1, 3, 4), torch.zeros(3, 1, 3, 4), [1, 1, 0])
    compat.apply_text_rope(Modeling, q, k, torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), [1, 1, 0])
    assert calls == [("sections", [1, 1, 0]), ("merged", None)]


def test_causal_mask_passes_the_cache_under_the_installed_name():
    from transformers.cache_utils import DynamicCache
    from transformers.masking_utils import create_causal_mask

    from photon.adapters.qwen2_5_vl import load_tiny

    config = load_tiny().model.config.get_text_config()
    config._attn_implementation = "eager"
    embeds = torch.zeros(2, 5, config.hidden_size)
    padding = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    cache = DynamicCache(config=config)
    ours = compat.causal_mask(config=config, inputs_embeds=embeds, attention_mask=padding, cache=cache)
    theirs = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=padding,
                                **{compat.cache_keyword(create_causal_mask): cache})
    assert torch.equal(ours, theirs) and ours.shape[-2:] == (5, 5)


def test_checkpointing_is_switched_on_and_off_on_every_release():
    from photon.adapters.qwen2_5_vl import load_tiny

    model = load_tiny().model
    layers = model.model.language_model.layers
    compat.enable_checkpointing(model)
    assert all(layer.gradient_checkpointing for layer in layers)
    compat.disable_checkpointing(model)
    assert not any(layer.gradient_checkpointing for layer in layers)


def test_model_output_and_output_cache_round_trip():
    cache = object()
    out = compat.model_output(torch.zeros(1, 2, 3), cache)
    assert compat.output_cache(out) is cache and compat.output_cache(None) is None


def test_doctor_reports_each_package_against_its_range(capsys):
    from photon.cli import main

    result = doctor.report()
    rows = {row["name"]: row for row in result["packages"]}
    assert rows["transformers"]["declared"] == compat.TESTED_TRANSFORMERS
    assert rows["transformers"]["installed"] == compat.installed("transformers")
    assert rows["torch"]["status"] == "ok" and rows["flash-attn"]["extra"] == "flash"
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"transformers tested: {compat.TESTED_TRANSFORMERS}" in out
    assert re.search(rf"^transformers\s+{re.escape(compat.installed('transformers'))}\s+{re.escape(compat.TESTED_TRANSFORMERS)}\s+ok$", out, re.M)
    assert main(["doctor", "--json"]) == 0
    assert '"transformers_pins"' in capsys.readouterr().out


def test_doctor_says_when_transformers_is_outside_the_tested_range(monkeypatch):
    real = compat.installed
    monkeypatch.setattr(compat, "installed", lambda name: "5.12.0" if name == "transformers" else real(name))
    rows = {row["name"]: row for row in doctor.report()["packages"]}
    assert rows["transformers"]["status"] == "OUTSIDE the tested range"


def test_import_photon_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, photon; print('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert photon.__version__
