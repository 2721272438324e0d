"""Markdown from the report dictionaries, and atomic writing of the output files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from photon.core.files import write_atomic

# Efficiency columns shown in markdown (the JSON has every field of cases.EFFICIENCY_FIELDS).
SHOWN_EFFICIENCY = (("n_kept", "kept tokens", "{:.1f}"), ("keep_ratio", "keep ratio", "{:.3f}"), ("total_s", "s/case", "{:.3f}"))


def _value(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    ci = entry.get("ci")
    return f"{entry['value']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _plain(value, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _run_lines(summary: dict[str, Any], failures: dict[str, Any]) -> list[str]:
    described = "; ".join(f"{k} {', '.join(v)}" for k, v in summary["run"].items())
    lines = [f"- predictions: `{summary['predictions']}`: {summary['n_cases']} cases scored" + (f" ({described})" if described else "")]
    bad, missing = summary["bad_records"], summary["missing_predictions"]
    if bad["count"]:
        lines.append(f"- bad records left out: {bad['count']} (first: {bad['examples'][0]})")
    if missing["count"]:
        lines.append(f"- reference records without a prediction: {missing['count']} (first: {missing['examples'][0]})")
    reasons = ", ".join(f"{reason} {count}" for reason, count in failures["by_reason"].items())
    lines.append(f"- parse failures (scored as wrong): {failures['count']}" + (f" ({reasons})" if reasons else ""))
    return lines


def _bootstrap_line(info: dict[str, Any]) -> str:
    paired = "paired " if info.get("paired") else ""
    return (
        f"- {int(info['level'] * 100)}% confidence intervals in brackets: {paired}percentile bootstrap over cases, "
        f"{info['resamples']} resamples, seed {info['seed']}"
    )


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# photon eval: {report['benchmark']}", ""]
    lines += _run_lines(report, report["parse_failures"])
    lines.append(_bootstrap_line(report["bootstrap"]))
    lines += [f"- {note}" for note in report["notes"]]
    for table in report["tables"]:
        header = [table["title"].lower().removeprefix("by ").split(" (")[0], "n"]
        header += [c["label"] for c in table["columns"]] + ["unparsed"] + [label for _, label, _ in SHOWN_EFFICIENCY]
        body = [
            [row["label"], str(row["n"])]
            + [_value(row["metrics"].get(c["key"])) for c in table["columns"]]
            + [str(row["unparsed"])]
            + [_plain(row["efficiency"][key], fmt) for key, _, fmt in SHOWN_EFFICIENCY]
            for row in table["rows"]
        ]
        lines += ["", f"## {table['title']}", ""] + _table(header, body)
    return "\n".join(lines) + "\n"


def compare_markdown(report: dict[str, Any]) -> str:
    lines = [f"# photon eval --compare: {report['benchmark']}", "", "Run A:"]
    lines += _run_lines(report["a"], report["a"]["parse_failures"]) + [f"- {n}" for n in report["a"]["notes"]]
    lines += ["", "Run B:"]
    lines += _run_lines(report["b"], report["b"]["parse_failures"]) + [f"- {n}" for n in report["b"]["notes"]]
    lines += [
        "",
        f"- {report['n_shared']} cases in both runs are compared"
        + (f"; left out: {report['only_in_a']} only in A, {report['only_in_b']} only in B" if report["only_in_a"] or report["only_in_b"] else ""),
        _bootstrap_line(report["bootstrap"]),
    ]
    for table in report["tables"]:
        body = []
        for row in table["rows"]:
            for column in table["columns"]:
                entry = row["metrics"].get(column["key"])
                if entry:
                    body.append([row["label"], str(row["n"]), column["label"], _value(entry["a"]), _value(entry["b"]), _value(entry["diff"])])
            eff_a, eff_b = row["efficiency"]["a"], row["efficiency"]["b"]
            for key, label, fmt in SHOWN_EFFICIENCY:
                if eff_a[key] is not None or eff_b[key] is not None:
                    diff = None if eff_a[key] is None or eff_b[key] is None else eff_b[key] - eff_a[key]
                    body.append([row["label"], str(row["n"]), label, _plain(eff_a[key], fmt), _plain(eff_b[key], fmt), _plain(diff, fmt)])
            body.append([row["label"], str(row["n"]), "unparsed", str(row["unparsed"]["a"]), str(row["unparsed"]["b"]),
                         str(row["unparsed"]["b"] - row["unparsed"]["a"])])
        header = [table["title"].lower().removeprefix("by ").split(" (")[0], "n", "metric", "A", "B", "B - A"]
        lines += ["", f"## {table['title']}", ""] + _table(header, body)
    return "\n".join(lines) + "\n"




def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))
