"""The benchmark's table: one column per engine, then ours ÷ each peer's."""

from __future__ import annotations

from collections.abc import Callable

from .bandwidth import decode_bound

MB = 1e6


def _cell(s: dict | None, fmt: str = "{:.1f}") -> str:
    if not s:
        return "-"
    if s["runs"] == 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def _read_speed(r: dict, report: dict) -> float:
    # the engine's own working set's read speed (older reports: the memory's)
    return r.get("read_bandwidth_bytes_s", report["read_bandwidth_bytes_s"])


def _bound(r: dict, report: dict) -> float:
    return decode_bound(r["weight_bytes"], _read_speed(r, report))


def rows(report: dict) -> list[tuple[str, Callable[[dict], str]]]:
    out: list[tuple[str, Callable[[dict], str]]] = [
        ("load s", lambda r: f"{r['load_s']:.2f}"),
        ("warm-up s", lambda r: f"{r['warmup_s']:.2f}"),
        (f"prefill {report['prompt_tokens']} tok/s", lambda r: _cell(r["prefill_tok_s"])),
        (
            f"TTFT ms ({report['decode_prompt_tokens']}-token prompt)",
            lambda r: _cell(r["ttft_ms"]),
        ),
    ]
    for b in report["batches"]:
        out.append((f"decode b{b} tok/s", lambda r, b=str(b): _cell(r["decode_tok_s"].get(b))))
    out += [
        ("peak RSS MB", lambda r: f"{r['peak_rss_bytes'] / MB:.0f}"),
        ("weights read/token MB", lambda r: f"{r['weight_bytes'] / MB:.1f}"),
        ("working-set read GB/s", lambda r: f"{_read_speed(r, report) / 1e9:.1f}"),
        ("bandwidth bound tok/s", lambda r: f"{_bound(r, report):.0f}"),
        (
            "decode b1 / bound",
            lambda r: (
                f"{r['decode_tok_s']['1']['median'] / _bound(r, report):.0%}"
                if "1" in r["decode_tok_s"]
                else "-"
            ),
        ),
    ]
    return out


def ratios(ours: dict, peer: dict, batches: list[int]) -> list[str]:
    def q(a: float, b: float) -> str:
        return f"{a / b:.2f}x"

    parts = [f"prefill {q(ours['prefill_tok_s']['median'], peer['prefill_tok_s']['median'])}"]
    for b in map(str, batches):
        if b in ours["decode_tok_s"] and b in peer["decode_tok_s"]:
            o, p = ours["decode_tok_s"][b]["median"], peer["decode_tok_s"][b]["median"]
            parts.append(f"decode b{b} {q(o, p)}")
    if ours.get("ttft_ms") and peer.get("ttft_ms"):
        parts.append(f"TTFT {q(ours['ttft_ms']['median'], peer['ttft_ms']['median'])}")
    parts.append(f"peak RSS {q(ours['peak_rss_bytes'], peer['peak_rss_bytes'])}")
    return parts


def render(report: dict) -> str:
    ok = [r for r in report["results"] if "error" not in r]
    failed = [r for r in report["results"] if "error" in r]
    m = report["machine"]
    lines = [
        f"{report['model']}",
        f"{m['cpu']}, {report['threads']} threads, memory read bandwidth "
        f"{report['read_bandwidth_bytes_s'] / 1e9:.1f} GB/s (each engine's bound: the read speed "
        f"of a buffer the size of its weights per token); greedy, {report['new_tokens']} new "
        f"tokens; median of {report['runs']} runs (min-max)",
        "",
    ]
    if ok:
        table = [[""] + [r["label"] for r in ok]]
        for name, get in rows(report):
            table.append([name] + [get(r) for r in ok])
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        ours = next((r for r in ok if r["engine"] == "llama3"), None)
        if ours:
            lines.append("")
            for peer in ok:
                if peer is not ours:
                    lines.append(
                        f"{ours['label']} / {peer['label']}: "
                        + ", ".join(ratios(ours, peer, report["batches"]))
                    )
    for r in failed:
        lines.append(f"{r['engine']}: not measured: {r['error']}")
    return "\n".join(lines)
