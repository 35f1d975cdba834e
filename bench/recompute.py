#!/usr/bin/env python3
"""Recomputes the published figures of README.md and BENCHMARKS.md from the committed raw data.

    python3 bench/recompute.py            # every figure in the table; exit 1 on any mismatch
    python3 bench/recompute.py -v         # also print each figure as recomputed
    python3 bench/recompute.py --self-test   # a figure altered in the text must fail the audit

Each entry of FIGURES names a figure as it is printed (`shown`), a piece of the document around it
(`context`, which must be found verbatim in the document and contain `shown`), and how to compute
it from files under benchmarks/. The computed value, formatted as the document formats it, must
equal `shown`. A document edit that changes the figure (or its context) without the data, or data
that no longer give the figure, fails the audit.

How values are computed (never from a file's own summary where the raw values are there):
  - bench `results.json`: p50/p95 over `runs[]` of one scenario and mode (linear interpolation
    between ranks, as src/bench/stats.rs), of `total_ms` (requested -> first_token), of one phase
    (`phases_ms`), or of the sum of phases up to an anchor ("requested -> weights_on_device" as
    the sum of the phases' p50s, the tables' basis); decode tokens/s as 1000 / the p50 of each
    run's ms per decoded token (`decode.caller_decode_ms / (tokens - 1)`); the floor from
    `floor.floor_ms` of the same file (ratios only within one run).
  - loadgen `results.json`: output tokens/s as the successful requests' `output_tokens` over
    `summary.wall_s`; TTFT p50/p99 over `requests[].ttft_ms`; inter-token p50/p99 from
    `requests[].itl_ms` when the file has them (loadgen since 2026-12-07), else from
    `summary.itl_ms` (older files kept only the summary: marked `summary-only` below).
  - `concurrency.json`: `wall_ratio` (older files kept only the medians).

Covered: README's first screen (the H200 8B attach, its floor ratio, fresh process and
transformers; the H100 OPT-125m attach figures and their n; the process-vs-thread overhead range
and decode range), BENCHMARKS.md's tables of the H100 2026-12-07 floors (8B before/after), the
real-size attach table (8B and 7B rows), the prewarm range, the KV-slab recheck (1.01x / 1.88x /
1.97x), both continuous-batching tables (run3, run5) with their ratios, the CPU concurrency 1.28x,
the process-vs-thread overhead table (every row), the H100 2026-11-27 cold-start table's
to-first-token rows (p50, p95, standard / mode), the "Worker processes on a GPU" table and the
H100 2026-12-07 decode-graphs tables (`generate` medians of its per-run tok/s files, every
`serve` row).

Not covered (no raw data committed for them, or not yet in the table): figures taken from session
logs only (BENCHMARKS.md says so where it cites them: the H100 2026-12-07 opt-125m attach p50s,
parked re-attach 11.1 ms and 8B serving runs through `serve`, whose raw files did not come back;
the 1B's standard and transformers, the OPT-125m row of the real-size table); the 100-cycle memory test's byte counts
(a test log, not a results.json); the fault-containment timings (session logs); the 2x H200 and
"Models on the GPU" sections, the H100 2026-11-27 engine_ready and phase tables, and the CPU
sections (their raw data is committed; entries not written yet); the vLLM RFC's published
numbers (not ours); inter-token percentiles of loadgen files older
than 2026-12-07 (summary only: checked against the summary, not recomputed).
"""
import glob
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
B = "benchmarks/"
_cache = {}


def load(path):
    if path not in _cache:
        with open(os.path.join(ROOT, path)) as f:
            _cache[path] = json.load(f)
    return _cache[path]


def percentile(values, q):
    v = sorted(values)
    if not v:
        raise ValueError("no values")
    rank = max(0.0, min(1.0, q / 100.0)) * (len(v) - 1)
    lo, hi = int(rank // 1), int(-(-rank // 1))
    return v[lo] + (v[hi] - v[lo]) * (rank - lo)


def runs(path, mode, scenario="single"):
    found = [r for r in load(path)["runs"] if r["mode"] == mode and r["scenario"] == scenario]
    if not found:
        raise ValueError(f"{path}: no {scenario} runs of {mode}")
    return found


def total(path, mode, q=50, scenario="single"):
    return percentile([r["total_ms"] for r in runs(path, mode, scenario)], q)


def count(path, mode, scenario="single"):
    return len(runs(path, mode, scenario))


def phase(path, mode, name, q=50):
    return percentile([r["phases_ms"][name] for r in runs(path, mode)], q)


def to_weights(path, mode):
    """requested -> weights_on_device as the sum of its phases' p50s (the tables' basis)."""
    names = ["process_started", "device_ready", "weights_read", "weights_on_device"]
    return sum(phase(path, mode, n) for n in names)


def to_engine_ready(path, mode):
    return to_weights(path, mode) + phase(path, mode, "engine_ready")


def floor(path):
    """This run's host-to-device floor: `floor.floor_ms`, or (a run with no controller path,
    whose file leaves floor_ms empty) its runs' weight bytes over its own measured bandwidth."""
    d = load(path)
    values = list(d["floor"]["floor_ms"].values())
    if values:
        (value,) = values
        return value
    # Our own loader's count (the transformers peer counts its files' bytes, a little more).
    (size,) = {r["bytes"] for r in d["runs"] if r.get("bytes") and r["mode"] != "transformers"}
    return size / (d["floor"]["bandwidth_gb_per_s"] * 1e9) * 1e3


def decode_tps(path, mode):
    per_token = [r["decode"]["caller_decode_ms"] / max(1, r["decode"]["tokens"] - 1)
                 for r in runs(path, mode) if r.get("decode")]
    return 1000.0 / percentile(per_token, 50)


def prewarm_s(path):
    return load(path)["meta"]["controller_prewarm_ms"] / 1e3


def lg_tps(path):
    d = load(path)
    tokens = sum(r["output_tokens"] for r in d["requests"] if r["ok"])
    return tokens / d["summary"]["wall_s"]


def lg_ttft(path, q):
    return percentile([r["ttft_ms"] for r in load(path)["requests"] if r["ok"] and r.get("ttft_ms") is not None], q)


def lg_itl(path, q):
    d = load(path)
    gaps = [g for r in d["requests"] if r["ok"] for g in r.get("itl_ms", [])]
    if gaps:
        return percentile(gaps, q)
    return d["summary"]["itl_ms"][{50: "p50", 99: "p99"}[q]]  # summary-only (pre 2026-12-07)


def f(n):
    return lambda v: f"{v:.{n}f}"


def thousands(v):
    return f"{v:,.0f}".replace(",", " ")


def signed(n, unit=""):
    return lambda v: f"{v:+.{n}f}{unit}".replace("-", "-")


# --- sources
H100 = B + "h100-2026-11-27/results.json"
L8 = B + "h200-2026-11-28-large/8b/bench-llama-3.1-8b-controller/results.json"
L8S = B + "h200-2026-11-28-large/8b/bench-llama-3.1-8b-standard/results.json"
L8D = B + "h200-2026-11-28-large/8b/bench-llama-3.1-8b-cold-disk/results.json"
Q7 = B + "h200-2026-11-28-large/7b/bench-qwen2.5-7b-controller/results.json"
Q7S = B + "h200-2026-11-28-large/7b/bench-qwen2.5-7b-standard/results.json"
ALT = B + "h200-2026-11-28-large/7b/bench-alternating/results.json"
RE1 = B + "h200-2026-11-28-large/recheck/bench-llama-3.1-8b-controller/results.json"
FA = B + "h100-2026-12-07-floors/llama-8b-after/results.json"
FB = B + "h100-2026-12-07-floors/llama-8b-before/results.json"
OV = B + "h200-2026-11-28-overhead/"
CPUOV = B + "cpu-2026-11-28-overhead/"
SV = B + "h200-2026-11-28-serving/"


def lg(run, name):
    return f"{SV}{run}/loadgen-{name}/results.json"


def ov_rows():
    """The overhead table, row by row: (file, shown thread->process, diff, decode, pct)."""
    rows = [
        (OV + "3-one-round-trip/free-1", "10.47 → 10.98 ms", "+0.51 ms", "369.4 → 356.2", "-3.6%"),
        (OV + "3-one-round-trip/free-2", "10.32 → 10.69 ms", "+0.37 ms", "309.1 → 367.0", "+18.8%"),
        (OV + "3-one-round-trip/free-3", "10.08 → 10.72 ms", "+0.64 ms", "378.7 → 384.4", "+1.5%"),
        (OV + "3-one-round-trip/pinned-15", "10.05 → 10.42 ms", "+0.37 ms", "395.2 → 391.8", "-0.9%"),
        (OV + "3-one-round-trip/pinned-3", "9.95 → 10.74 ms", "+0.79 ms", "397.5 → 399.5", "+0.5%"),
        (OV + "3-one-round-trip/pinned-9", "11.54 → 11.74 ms", "+0.20 ms", "290.4 → 297.1", "+2.3%"),
        (OV + "4-event-tracking-off/pinned-3", "10.58 → 11.16 ms", "+0.59 ms", "338.5 → 337.0", "-0.5%"),
        (OV + "4-event-tracking-off/pinned-9", "9.77 → 10.26 ms", "+0.50 ms", "405.1 → 389.6", "-3.8%"),
        (OV + "4-event-tracking-off/pinned-15", "10.18 → 10.88 ms", "+0.69 ms", "375.8 → 380.0", "+1.1%"),
        (CPUOV + "opt-125m-free", "49.52 → 49.72 ms", "+0.21 ms", "58.8 → 60.4", "+2.7%"),
        (CPUOV + "opt-125m-pinned", "49.31 → 49.41 ms", "+0.09 ms", "61.6 → 62.5", "+1.5%"),
        (CPUOV + "tiny-opt-free", "3.67 → 3.14 ms", "-0.53 ms", "1888.7 → 1887.6", "-0.1%"),
        (CPUOV + "tiny-opt-pinned", "3.46 → 3.08 ms", "-0.38 ms", "2233.7 → 2230.0", "-0.2%"),
    ]
    out = []
    for d, ft, diff, dec, pct in rows:
        p = d + "/results.json"
        t, pr = (lambda p=p: total(p, "controller")), (lambda p=p: total(p, "controller_process"))
        dt, dp = (lambda p=p: decode_tps(p, "controller")), (lambda p=p: decode_tps(p, "controller_process"))
        ctx = f"| {ft} | {diff} | {dec} | {pct} |"
        out += [
            ("BENCHMARKS.md", ctx, ft, lambda t=t, pr=pr: (t(), pr()), lambda v: f"{v[0]:.2f} → {v[1]:.2f} ms"),
            ("BENCHMARKS.md", ctx, diff, lambda t=t, pr=pr: pr() - t(), signed(2, " ms")),
            ("BENCHMARKS.md", ctx, dec, lambda dt=dt, dp=dp: (dt(), dp()), lambda v: f"{v[0]:.1f} → {v[1]:.1f}"),
            ("BENCHMARKS.md", ctx, pct, lambda dt=dt, dp=dp: (dp() / dt() - 1) * 100, signed(1, "%")),
        ]
    return out


def pinned_decode_range():
    files = [OV + f"{s}/pinned-{c}/results.json" for s in ("3-one-round-trip", "4-event-tracking-off") for c in (3, 9, 15)]
    pct = [(decode_tps(p, "controller_process") / decode_tps(p, "controller") - 1) * 100 for p in files]
    return min(pct), max(pct)


def gpu_overhead_range():
    files = sorted(glob.glob(os.path.join(ROOT, OV, "[34]-*/*/results.json")))
    diffs = [total(p, "controller_process") - total(p, "controller") for p in (os.path.relpath(x, ROOT) for x in files)]
    return min(diffs), max(diffs)


R, BM = "README.md", "BENCHMARKS.md"
FIGURES = [
    # README, first screen
    (R, "**309 ms** after the attach request", "309", lambda: total(L8, "controller"), f(0)),
    (R, "on the device after\n295 ms, 1.01x", "295", lambda: to_weights(L8, "controller"), f(0)),
    (R, "295 ms, 1.01x the 292 ms host-to-device", "1.01x", lambda: to_weights(L8, "controller") / floor(L8), lambda v: f"{v:.2f}x"),
    (R, "1.01x the 292 ms host-to-device", "292", lambda: floor(L8), f(0)),
    (R, "403 ms from the page cache", "403", lambda: total(L8, "controller_nocache"), f(0)),
    (R, "**22.9 s** for a fresh process", "22.9", lambda: total(L8S, "standard") / 1e3, f(1)),
    (R, "**14.5 s**\nfor transformers", "14.5", lambda: total(L8S, "transformers") / 1e3, f(1)),
    (R, "first token **13.7 ms** after", "13.7", lambda: total(H100, "controller_nocache"), f(1)),
    (R, "(9.6 ms from the\nhost cache)", "9.6", lambda: total(H100, "controller"), f(1)),
    (R, "**638 ms** for a fresh process", "638", lambda: total(H100, "standard"), f(0)),
    (R, "**12.6 s** for transformers", "12.6", lambda: total(H100, "transformers") / 1e3, f(1)),
    (R, "p50 of 20 starts", "20", lambda: min(count(H100, m) for m in ("controller", "controller_nocache", "standard")), f(0)),
    (R, "(transformers: p50 of 5)", "5", lambda: count(H100, "transformers"), f(0)),
    (R, "a process adds 0.2-0.8 ms", "0.2-0.8", gpu_overhead_range, lambda v: f"{v[0]:.1f}-{v[1]:.1f}"),
    (R, "decode stays within -3.8% to +2.3%", "-3.8% to +2.3%", pinned_decode_range, lambda v: f"{v[0]:.1f}% to {v[1]:+.1f}%"),
    # BENCHMARKS: H100 2026-12-07 floors
    (BM, "308.6 ms to first token (296.5 ms to engine_ready)", "308.6", lambda: total(FA, "controller"), f(1)),
    (BM, "308.6 ms to first token (296.5 ms to engine_ready)", "296.5", lambda: to_engine_ready(FA, "controller"), f(1)),
    (BM, "305.3 ms (296.0 ms); floor 290.7 ms", "305.3", lambda: total(FB, "controller"), f(1)),
    (BM, "305.3 ms (296.0 ms); floor 290.7 ms", "296.0", lambda: to_engine_ready(FB, "controller"), f(1)),
    (BM, "305.3 ms (296.0 ms); floor 290.7 ms", "290.7", lambda: floor(FA), f(1)),
    # real-size attach table
    (BM, "| **309.4 ms** (398.7) | 295.0 ms | **1.01x** | 291.9 ms |", "309.4", lambda: total(L8, "controller"), f(1)),
    (BM, "| **309.4 ms** (398.7) | 295.0 ms | **1.01x** | 291.9 ms |", "398.7", lambda: total(L8, "controller", 95), f(1)),
    (BM, "| **309.4 ms** (398.7) | 295.0 ms | **1.01x** | 291.9 ms |", "295.0", lambda: to_weights(L8, "controller"), f(1)),
    (BM, "| **309.4 ms** (398.7) | 295.0 ms | **1.01x** | 291.9 ms |", "1.01x", lambda: to_weights(L8, "controller") / floor(L8), lambda v: f"{v:.2f}x"),
    (BM, "| **309.4 ms** (398.7) | 295.0 ms | **1.01x** | 291.9 ms |", "291.9", lambda: floor(L8), f(1)),
    (BM, "| **403.0 ms** (418.7) | 390.3 ms | 1.34x |", "403.0", lambda: total(L8, "controller_nocache"), f(1)),
    (BM, "| **403.0 ms** (418.7) | 390.3 ms | 1.34x |", "418.7", lambda: total(L8, "controller_nocache", 95), f(1)),
    (BM, "| **403.0 ms** (418.7) | 390.3 ms | 1.34x |", "390.3", lambda: to_weights(L8, "controller_nocache"), f(1)),
    (BM, "| **403.0 ms** (418.7) | 390.3 ms | 1.34x |", "1.34x", lambda: to_weights(L8, "controller_nocache") / floor(L8), lambda v: f"{v:.2f}x"),
    (BM, "| 22 862 ms (23 865) | 22 263 ms | 77x", "22 862", lambda: total(L8S, "standard"), thousands),
    (BM, "| 22 862 ms (23 865) | 22 263 ms | 77x", "23 865", lambda: total(L8S, "standard", 95), thousands),
    (BM, "| 22 862 ms (23 865) | 22 263 ms | 77x", "22 263", lambda: to_weights(L8S, "standard"), thousands),
    (BM, "| 22 862 ms (23 865) | 22 263 ms | 77x (this run's floor, 290.5 ms) |", "77x", lambda: to_weights(L8S, "standard") / floor(L8S), lambda v: f"{v:.0f}x"),
    (BM, "this run's floor, 290.5 ms", "290.5", lambda: floor(L8S), f(1)),
    (BM, "(fresh process, p50 of 3)", "3", lambda: count(L8S, "standard"), f(0)),
    (BM, "| 14 457 ms | 13 917 ms | 48x |", "14 457", lambda: total(L8S, "transformers"), thousands),
    (BM, "| 14 457 ms | 13 917 ms | 48x |", "13 917", lambda: to_weights(L8S, "transformers"), thousands),
    (BM, "| 14 457 ms | 13 917 ms | 48x |", "48x", lambda: to_weights(L8S, "transformers") / floor(L8S), lambda v: f"{v:.0f}x"),
    (BM, "| 8 970 ms | 8 927 ms: **1.80 GB/s** from disk |", "8 970", lambda: total(L8D, "controller_nocache"), thousands),
    (BM, "| 8 970 ms | 8 927 ms: **1.80 GB/s** from disk |", "8 927", lambda: to_weights(L8D, "controller_nocache"), thousands),
    (BM, "| **293.6 ms** (374.0) | 280.2 ms | **1.01x** | 277.3 ms |", "293.6", lambda: total(Q7, "controller"), f(1)),
    (BM, "| **293.6 ms** (374.0) | 280.2 ms | **1.01x** | 277.3 ms |", "374.0", lambda: total(Q7, "controller", 95), f(1)),
    (BM, "| **293.6 ms** (374.0) | 280.2 ms | **1.01x** | 277.3 ms |", "280.2", lambda: to_weights(Q7, "controller"), f(1)),
    (BM, "| **293.6 ms** (374.0) | 280.2 ms | **1.01x** | 277.3 ms |", "277.3", lambda: floor(Q7), f(1)),
    (BM, "| 358.6 ms (363.3) | 346.0 ms | 1.25x |", "358.6", lambda: total(Q7, "controller_nocache"), f(1)),
    (BM, "| 358.6 ms (363.3) | 346.0 ms | 1.25x |", "1.25x", lambda: to_weights(Q7, "controller_nocache") / floor(Q7), lambda v: f"{v:.2f}x"),
    (BM, "| qwen2.5-7b, standard (p50 of 2) | 21 331 ms |", "21 331", lambda: total(Q7S, "standard"), thousands),
    # recheck and prewarm
    (BM, "from the host cache 324.2 ms to first", "324.2", lambda: total(RE1, "controller"), f(1)),
    (BM, "weights_on_device 296.5 ms, 1.01x that run's 292.8 ms floor", "1.01x", lambda: to_weights(RE1, "controller") / floor(RE1), lambda v: f"{v:.2f}x"),
    (BM, "1.01x that run's 292.8 ms floor", "292.8", lambda: floor(RE1), f(1)),
    (BM, "577.5 ms (requested -> weights_on_device 551.7 ms: 1.88x", "577.5", lambda: total(RE1, "controller_nocache"), f(1)),
    (BM, "weights_on_device 551.7 ms: 1.88x", "551.7", lambda: to_weights(RE1, "controller_nocache"), f(1)),
    (BM, "551.7 ms: 1.88x the floor", "1.88x", lambda: to_weights(RE1, "controller_nocache") / floor(RE1), lambda v: f"{v:.2f}x"),
    (BM, "1.97x\n  counting to the first token", "1.97x", lambda: total(RE1, "controller_nocache") / floor(RE1), lambda v: f"{v:.2f}x"),
    (BM, "(18.5 s 7B, 18.9 s alternating, 21.0 s 8B", "18.5", lambda: prewarm_s(Q7), f(1)),
    (BM, "(18.5 s 7B, 18.9 s alternating, 21.0 s 8B", "18.9", lambda: prewarm_s(ALT), f(1)),
    (BM, "(18.5 s 7B, 18.9 s alternating, 21.0 s 8B", "21.0", lambda: prewarm_s(L8), f(1)),
    # CPU concurrency
    (BM, "median of 5): 1.28x the wall time", "1.28x", lambda: load(SV + "run3/bench-concurrency-cpu/concurrency.json")["wall_ratio"], lambda v: f"{v:.2f}x"),
] + ov_rows()

ISO = B + "h200-2026-11-28-isolation/bench-isolation/results.json"


def cold_table(path, rows):
    """Rows `| label | p50 | p95 | standard / mode |` of one bench file."""
    out = []
    for mode, ctx, p50, p95, ratio, fmt in rows:
        out += [
            (BM, ctx, p50, lambda m=mode: total(path, m), fmt),
            (BM, ctx, p95, lambda m=mode: total(path, m, 95), fmt),
        ]
        if ratio:
            out.append((BM, ctx, ratio, lambda m=mode: total(path, "standard") / total(path, m), lambda v: f"{v:.1f}x" if v >= 1 else f"{v:.2f}x"))
    return out


FIGURES += cold_table(H100, [
    ("standard", "| standard (fresh process) | 638.4 ms | 732.3 ms | 1x |", "638.4", "732.3", None, f(1)),
    ("controller", "| controller (host cache) | **9.62 ms** | 16.32 ms | **66.4x** |", "9.62", "16.32", "66.4x", f(2)),
    ("controller_nocache", "| controller_nocache (page cache) | **13.65 ms** | 16.32 ms | **46.8x** |", "13.65", "16.32", "46.8x", f(2)),
    ("transformers", "| transformers peer (fresh process) | 12 552 ms | 13 280 ms | 0.05x |", "12 552", "13 280", "0.05x", thousands),
]) + cold_table(ISO, [
    ("standard", "| standard (fresh process) | 817.8 ms | 891.8 ms | 1x |", "817.8", "891.8", None, f(1)),
    ("controller", "| controller (worker thread, host cache) | 10.04 ms | 13.82 ms | 81.5x |", "10.04", "13.82", "81.5x", f(2)),
    ("controller_process", "| controller_process (worker process, host cache) | **10.18 ms** | 13.53 ms | 80.4x |", "10.18", "13.53", "80.4x", f(2)),
    ("controller_nocache", "| controller_nocache (worker thread) | 16.47 ms | 17.65 ms | 49.7x |", "16.47", "17.65", "49.7x", f(2)),
])


def serving_rows(run, rows):
    out = []
    for name, ctx, tps, ratio, itl, itl_ratio, ttft, base in rows:
        p, b = lg(run, name), lg(run, base)
        out.append((BM, ctx, tps, lambda p=p: lg_tps(p), thousands if " " in tps or tps.replace("*", "").isdigit() else f(1)))
        if ratio:
            out.append((BM, ctx, ratio, lambda p=p, b=b: lg_tps(p) / lg_tps(b), lambda v: f"{v:.1f}x"))
        out.append((BM, ctx, itl, lambda p=p: (lg_itl(p, 50), lg_itl(p, 99)), lambda v: f"{v[0]:.2f} / {v[1]:.2f} ms"))
        if itl_ratio:
            out.append((BM, ctx, itl_ratio, lambda p=p, b=b: lg_itl(p, 99) / lg_itl(b, 99), lambda v: f"{v:.2f}x"))
        out.append((BM, ctx, ttft, lambda p=p: (lg_ttft(p, 50), lg_ttft(p, 99)),
                    (lambda v: f"{v[0]:.1f} / {v[1]:.1f} ms") if "." in ttft.split(" / ")[0] else (lambda v: f"{v[0]:.0f} / {thousands(v[1])} ms")))
    return out


FIGURES += serving_rows("run3", [
    ("opt-125m-c1", "| 205.8 | 1x | 4.79 / 6.76 ms | 8.1 / 23.6 ms |", "205.8", None, "4.79 / 6.76 ms", None, "8.1 / 23.6 ms", "opt-125m-c1"),
    ("opt-125m-c64", "| **7 353** | **35.7x** | 6.31 / 12.50 ms (**1.85x**) | 31 / 855 ms |", "7 353", "35.7x", "6.31 / 12.50 ms", "1.85x", "31 / 855 ms", "opt-125m-c1"),
    ("llama-3.2-1b-c1", "| 134.0 | 1x | 7.79 / 9.42 ms | 12.0 / 46.3 ms |", "134.0", None, "7.79 / 9.42 ms", None, "12.0 / 46.3 ms", "llama-3.2-1b-c1"),
    ("llama-3.2-1b-c64", "| **3 504** | **26.1x** | 12.75 / 21.35 ms (**2.27x**) | 60 / 1 378 ms |", "3 504", "26.1x", "12.75 / 21.35 ms", "2.27x", "60 / 1 378 ms", "llama-3.2-1b-c1"),
]) + serving_rows("run5", [
    ("opt-125m-c1", "| 365.3 | 1x | 2.51 / 5.06 ms | 5.4 / 29.4 ms |", "365.3", None, "2.51 / 5.06 ms", None, "5.4 / 29.4 ms", "opt-125m-c1"),
    ("opt-125m-c64", "| **9 608** | **26.3x** | 4.59 / 8.02 ms (**1.58x**) | 21 / 584 ms |", "9 608", "26.3x", "4.59 / 8.02 ms", "1.58x", "21 / 584 ms", "opt-125m-c1"),
    ("llama-3.2-1b-c1", "| 183.2 | 1x | 5.26 / 8.64 ms | 8.8 / 76.6 ms |", "183.2", None, "5.26 / 8.64 ms", None, "8.8 / 76.6 ms", "llama-3.2-1b-c1"),
    ("llama-3.2-1b-c64", "| **7 088** | **38.7x** | 6.92 / 13.11 ms (**1.52x**) | 26 / 870 ms |", "7 088", "38.7x", "6.92 / 13.11 ms", "1.52x", "26 / 870 ms", "llama-3.2-1b-c1"),
])


# H100 2026-12-07: decode graphs and the decode-attention kernel (build 45112c33ee)
GR = B + "h100-2026-12-07-graphs/"


def median_of_lines(path):
    """The median of the numbers in a text file, one a line (`generate`'s decode tok/s)."""
    with open(os.path.join(ROOT, path)) as fh:
        values = sorted(float(x) for x in fh.read().split())
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def spaced(n, bold=False):
    """`v` with `n` decimals and a space between thousands (`1 010.6`), bold when asked."""
    return lambda v: ("**{}**" if bold else "{}").format(f"{v:,.{n}f}".replace(",", " "))


def graphs_rows():
    out = []
    for ctx, model, cells in [
        ("| opt-125m f16 | **847.5** | 451.6 | 369.3 |", "opt-125m",
         [("gon-koff", "**847.5**"), ("goff-kon", "451.6"), ("goff-koff", "369.3")]),
        ("| llama-3.2-1b bf16 | **467.6** | 287.3 | 274.9 |", "llama-3.2-1b",
         [("gon-koff", "**467.6**"), ("goff-kon", "287.3"), ("goff-koff", "274.9")]),
        ("| llama-3.1-8b bf16 (median of 2) | | | 116.4 |", "llama-8b", [("goff-koff", "116.4")]),
    ]:
        for setup, shown in cells:
            path = f"{GR}decode/decode-{model}-{setup}.txt"
            out.append((BM, ctx, shown, lambda p=path: median_of_lines(p), spaced(1, shown.startswith("**"))))
    for clients, ctx, tps, ttft, itl in [
        (1, "| 1 | 119.3 | 12.5 / 84.0 ms | 8.26 / 8.94 ms |", "119.3", "12.5 / 84.0 ms", "8.26 / 8.94 ms"),
        (64, "| 64 | 2 721 | 470.1 / 864.3 ms | 16.85 / 126.53 ms |", "2 721", "470.1 / 864.3 ms", "16.85 / 126.53 ms"),
    ]:
        p = f"{GR}serving/serving-graphs-off/loadgen-c{clients}/results.json"
        out.append((BM, ctx, tps, lambda p=p: lg_tps(p), spaced(0) if " " in tps else spaced(1)))
        out.append((BM, ctx, ttft, lambda p=p: (lg_ttft(p, 50), lg_ttft(p, 99)), lambda v: f"{spaced(1)(v[0])} / {spaced(1)(v[1])} ms"))
        out.append((BM, ctx, itl, lambda p=p: (lg_itl(p, 50), lg_itl(p, 99)), lambda v: f"{v[0]:.2f} / {v[1]:.2f} ms"))
    return out


FIGURES += graphs_rows()


def main():
    verbose = "-v" in sys.argv[1:]
    docs = {}
    if "--self-test" in sys.argv[1:]:
        # The README's 309 ms printed as 300 ms: the context no longer matches, and an entry
        # that claims 300 must mismatch the data.
        with open(os.path.join(ROOT, R)) as fh:
            docs[R] = fh.read().replace("**309 ms**", "**300 ms**")
        FIGURES.append((R, "**300 ms** after the attach request", "300", lambda: total(L8, "controller"), f(0)))
        failed = audit(docs, verbose=False)
        assert failed == 2, f"the self-test expected 2 failures, got {failed}"
        print("self-test: an altered figure fails the audit")
        return
    failures = audit(docs, verbose)
    print(f"{len(FIGURES) - failures} of {len(FIGURES)} figures recomputed from the raw data; {failures} failed")
    sys.exit(1 if failures else 0)


def audit(docs, verbose):
    failures = 0
    for doc, context, shown, compute, fmt in FIGURES:
        if doc not in docs:
            with open(os.path.join(ROOT, doc)) as fh:
                docs[doc] = fh.read()
        where = f"{doc}: {shown!r} in {context!r}"
        if context not in docs[doc]:
            print(f"MISSING  {where}: the context is not in the document")
            failures += 1
            continue
        if shown not in context:
            print(f"BAD ENTRY {where}")
            failures += 1
            continue
        try:
            got = fmt(compute())
        except (OSError, KeyError, ValueError) as e:
            print(f"NO DATA  {where}: {e}")
            failures += 1
            continue
        if got != shown:
            print(f"MISMATCH {where}: the raw data give {got!r}")
            failures += 1
        elif verbose:
            print(f"ok       {where}")
    return failures


if __name__ == "__main__":
    main()
