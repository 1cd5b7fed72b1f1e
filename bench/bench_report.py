"""Ratios, settlement figures and the printed table of bench_all.py."""

from __future__ import annotations

PATHS = ["origin directly", "aiohttp hello", "bare proxy", "free route", "session-paid",
         "x402 deferred", "x402 after", "/v1/authorize"]


def settlement_figures(samples: list, loaded: int) -> dict:
    """settled/s during the load and in the drain window after it, from queue samples."""
    def settled(s: dict) -> int:
        return s["states"].get("settled", 0)

    out = {"queue_peak": max((s["open"] for s in samples), default=0),
           "oldest_open_peak_s": max((s["oldest_open_s"] for s in samples), default=0.0),
           "open_at_end": samples[-1]["open"] if samples else 0}
    load, tail = samples[:max(loaded, 1)], samples[max(loaded - 1, 0):]
    for label, part in (("settled_per_s_load", load), ("settled_per_s_drain", tail)):
        span = part[-1]["t"] - part[0]["t"] if len(part) > 1 else 0
        out[label] = round((settled(part[-1]) - settled(part[0])) / span, 2) if span else None
    return out


def report(b) -> dict:
    """The result dict of a finished Bench, with every ratio to the bare proxy."""
    bare = b.paths.get("bare proxy")
    for name, r in b.paths.items():
        if r.get("skipped") or not bare:
            continue
        r["x_rps"] = round(r["rps"] / bare["rps"], 3) if bare["rps"] else None
        r["x_rps_c1"] = round(r["rps_c1"] / bare["rps_c1"], 3) if bare["rps_c1"] else None
        r["added_p50_c1_ms"] = round(r["p50_c1_ms"] - bare["p50_c1_ms"], 3)
        r["x_cpu"] = (round(r["cpu_us_per_req"] / bare["cpu_us_per_req"], 2)
                      if r["cpu_us_per_req"] and bare["cpu_us_per_req"] else None)
    q = b.extra.get("queue")
    if q is not None and "x402 deferred" in b.paths:
        b.extra["settlement"] = settlement_figures(q, b.paths["x402 deferred"]["load_samples"])
    return {"paths": b.paths, **b.extra, "settings": vars(b.args)}


def print_table(res: dict) -> None:
    print("\n| path | req/s @32 | x bare | p50 @32 | p99 @32 | p50 @1 | +p50 @1 vs bare | "
          "CPU us/req | x bare CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in PATHS:
        r = res["paths"].get(name)
        if r is None:
            continue
        if r.get("skipped"):
            print(f"| {name} | skipped: {r['skipped']} |||||||")
            continue
        star = " *" if r["exhausted"] else ""
        print(f"| {name} | {r['rps']:,.0f}{star} | {r.get('x_rps', 0):.2f} "
              f"| {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['p50_c1_ms']:.2f} ms "
              f"| {r.get('added_p50_c1_ms', 0):+.2f} ms | {r['cpu_us_per_req'] or 0:,.0f} "
              f"| {r.get('x_cpu') or 0:.2f} |")
    st = res.get("settlement", {})
    rs = res.get("rss_sessions", {})
    print()
    print(f"start to /readyz 200 (x402 gateway, no Hedera rails, fresh SQLite): "
          f"{res.get('ready_s')} s; with the Hedera session rail: {res.get('ready_hedera_s')} s")
    print(f"RSS: idle {res.get('rss_idle_mb')} MB; {rs.get('sessions')} sessions, "
          f"{rs.get('called_once')} called once: {rs.get('rss_mb')} MB")
    for k, v in res.get("ledger", {}).items():
        print(f"ledger {k}: {v:,.0f}")
    print(f"x402 deferred queue: peak {st.get('queue_peak')} open, oldest open "
          f"{st.get('oldest_open_peak_s')} s, {st.get('open_at_end')} open at the end; "
          f"settled/s during load {st.get('settled_per_s_load')}, "
          f"in the drain window {st.get('settled_per_s_drain')}")
    print("queue depth (t s: open / settled): " + ", ".join(
        f"{s['t']:g}: {s['open']}/{s['states'].get('settled', 0)}" for s in res.get("queue", [])))
