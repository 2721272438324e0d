"""The GPU run's CPU-side pieces: the parity checks (float32 on the CPU), the scripts' syntax, and
the paper-table command at a tiny size (CI has no GPU; docs/benchmarks.md, A GPU run)."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_parity_checks_pass_on_the_cpu_and_write_their_report(tmp_path, capsys):
    from photon.bench.gpu_check import main

    assert main(["--out", str(tmp_path), "--device", "cpu", "--dtype", "float32", "--size", "tiny"]) == 0
    report = json.loads((tmp_path / "parity.json").read_text())
    checks = {c["check"] for c in report["checks"]}
    assert checks == {"keep-all logits equal stock", "keep-all greedy tokens equal stock",
                      "pruned prefill equals the stock-only reference", "pruned decode equals the stock-only reference"}
    assert all(c["passed"] and c["max_relative_difference"] <= 1e-4 for c in report["checks"])
    assert report["flash_attn_available"] is False and "did not run" in report["note"]


def test_a_parity_failure_is_reported_and_exits_1(tmp_path, monkeypatch):
    from photon.bench import gpu_check

    monkeypatch.setitem(gpu_check.TOLERANCE, "float32", -1.0)  # nothing can pass
    assert gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--dtype", "float32", "--size", "tiny"]) == 1
    assert not any(c["passed"] for c in json.loads((tmp_path / "parity.json").read_text())["checks"])


@pytest.mark.parametrize("script", ["gpu_check.sh", "fetch_gpu_wheels.sh"])
def test_the_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)]).returncode == 0


def test_the_paper_table_runs_at_a_tiny_size(tmp_path, capsys):
    from photon.cli import main

    out = tmp_path / "paper.json"
    assert main(["bench", "--paper-table", "--size", "tiny", "--volume", "28,56,56", "--repeats", "1", "--warmup", "0",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "photon: Photon 3D embedding + ITS" in printed and "(5.67)" in printed  # the paper's own train ratio
    result = json.loads(out.read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert rows["stock"]["visual_tokens"] == [14 * 2 * 2] * 2 and rows["stock"]["kept_tokens"] == rows["stock"]["visual_tokens"]
    assert rows["photon"]["visual_tokens"] == [2 * 2 * 2] * 2  # the 14^3 kernel: 28 x 56 x 56 -> 2 x 2 x 2 tokens
    assert rows["photon-max"]["visual_tokens"] == rows["stock"]["visual_tokens"]
    assert 0 < sum(rows["photon-max"]["kept_tokens"]) < sum(rows["stock"]["visual_tokens"])
    for row in rows.values():
        assert set(row["ratios"]) == {"kept_tokens", "train_steps_per_s", "decode_tokens_per_s", "generate_peak_memory"}
        assert row["train_steps_per_s"] > 0 and row["decode_tokens_per_s"] > 0
    assert rows["stock"]["ratios"]["train_steps_per_s"] == 1.0
    assert rows["photon"]["ratios"]["kept_tokens"] == pytest.approx(sum(rows["photon"]["kept_tokens"]) / (2 * 56))
