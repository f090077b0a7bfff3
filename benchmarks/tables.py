"""The benchmark suite's tables (run.py prints them; gpu.py reuses ``_align`` and ``_fmt``)."""

from __future__ import annotations


def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    head = ["workload", "implementation", "median ms", "min ms", "throughput", "% limit",
            "t / best peer", "(by min)", "max err", "1st call s", "bg cpu", "note"]
    body = []
    last = None
    for r in rows:
        title = r["title"] if r["title"] != last else ""
        last = r["title"]
        timed = "median_s" in r
        frac = r.get("frac_limit")
        body.append([
            title, r["impl"],
            _fmt(r.get("median_s") and r["median_s"] * 1e3, ".3f"),
            _fmt(r.get("min_s") and r["min_s"] * 1e3, ".3f"),
            f"{r['throughput']:.1f} {r['unit']}" if timed else "-",
            _fmt(frac and frac * 100, ".1f"),
            _fmt(r.get("vs_best_peer"), ".2f") + ("x" if r.get("vs_best_peer") else ""),
            _fmt(r.get("vs_best_peer_min"), ".2f") + ("x" if r.get("vs_best_peer_min") else ""),
            _fmt(r.get("err"), ".1e"),
            _fmt(r.get("first_call_s"), ".3f"),
            _fmt(r.get("bg_cpu"), ".2f"),
            r["status"].upper() + (": " if r["note"] else "") + r["note"]
            if r["status"] != "ok" else r["note"],
        ])
    return _align(head, body, right={2, 3, 4, 5, 6, 7, 8, 9, 10})


def format_compile(rows: list[dict]) -> str:
    head = ["step", "implementation", "cold s", "warm s", "plain step ms", "cold / best peer",
            "warm / best peer", "bg cpu", "note"]
    body = []
    last = None
    for r in rows:
        step = r.get("step", "mlp_step")
        step, last = (step if step != last else ""), step
        if r["status"] != "ok":
            body.append([step, r["impl"], "-", "-", "-", "-", "-", "-",
                         "ERROR: " + (r["cold"].get("error") or r["warm"].get("error", ""))])
            continue
        c, w = r["cold"], r["warm"]
        extra = max(c["second_call_extra_s"], w["second_call_extra_s"])
        note = f"2nd call +{extra:.3f} s" if extra > 0.1 * max(c["compile_s"], 1e-3) \
            and extra > 0.01 else ""
        body.append([step, r["impl"], f"{c['compile_s']:.3f}", f"{w['compile_s']:.3f}",
                     f"{w['plain_s'] * 1e3:.2f}",
                     _fmt(r.get("cold_vs_best_peer"), ".2f") + "x" * ("cold_vs_best_peer" in r),
                     _fmt(r.get("warm_vs_best_peer"), ".2f") + "x" * ("warm_vs_best_peer" in r),
                     _fmt(max((x.get("bg_cpu") or 0.0) for x in (c, w)), ".2f"), note])
    return _align(head, body, right={2, 3, 4, 5, 6, 7})


def format_memory(rows: list[dict]) -> str:
    """Time and peak memory side by side, for the rows that carry a memory measurement."""
    head = ["workload", "implementation", "median ms", "t / best peer", "peak MiB", "held MiB",
            "call MiB", "1st call MiB", "peak / least peer", "note"]
    body = []
    last = None
    for r in rows:
        if "memory" not in r:
            continue
        title, last = (r["title"] if r["title"] != last else ""), r["title"]
        m = r["memory"]
        note = ("ERROR: " + m["error"]) if "error" in m else ""
        if "error" not in m and "peak_mib" not in m:
            note = "peak not measured (clear_refs not writable): see 1st call"
        body.append([title, r["impl"], _fmt(r.get("median_s") and r["median_s"] * 1e3, ".3f"),
                     _fmt(r.get("vs_best_peer"), ".2f") + ("x" if r.get("vs_best_peer") else ""),
                     _fmt(m.get("peak_mib"), ".1f"), _fmt(m.get("held_mib"), ".1f"),
                     _fmt(m.get("call_mib"), ".1f"), _fmt(m.get("first_mib"), ".1f"),
                     _fmt(r.get("mem_vs_least_peer"), ".2f")
                     + ("x" if r.get("mem_vs_least_peer") is not None else ""), note])
    return _align(head, body, right={2, 3, 4, 5, 6, 7, 8})


def _align(head, body, right) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]

    def line(cells):
        out = [(str(c).rjust(w) if i in right else str(c).ljust(w))
               for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), sep] + [line(b) for b in body])


LEGEND = """\
median/min ms: wall time of one synchronized call (inputs allocated beforehand).
throughput: GB/s = bytes an ideal fused kernel reads + writes, per median time; GFLOP/s =
  matmul flops per median time. % limit: of the measured copy bandwidth at the working-set size
  (GB/s rows) or of the measured FMA peak (GFLOP/s rows): see 'limits used' above.
t / best peer: median time / median time of the fastest peer in this run (> 1: slower; < 1:
  faster); (by min): the same with the fastest times, less sensitive to background load.
max err: max |result - float64 numpy reference| / max |reference| (train steps: the updated
  parameters' error beyond half a float32 ulp, relative to the size of the reference update).
1st call s: includes compilation where there is one (in this process; lamina and torch.compile
  may reuse their on-disk caches from earlier runs).
bg cpu: cores used by other processes while this row was timed (high: a noisy row)."""
