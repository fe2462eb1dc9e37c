#!/usr/bin/env python3
"""The closing screen of scripts/run.sh: a few lines from the main job's reports.

Usage: summary.py OUT_DIR [BASE_DIR]
  OUT_DIR   the job's output folder (eval.json and report.json from `pkv eval --json`
            and `pkv analyze --json`; formats in docs/eval.md and docs/formats/report.md)
  BASE_DIR  paths are shown relative to it when inside it (default: the current folder)

Prints: the model's perplexity with an fp16 KV cache; at 2 and at 4 bits the method with
the lowest attention KL (mean K/V NMSE when the dump has no queries) next to KIVI, and the
eval perplexities at 2 bits; where the long tables and the HTML report are.
Standard library only (python3 of a fresh Debian 12).
"""
import json
import os
import sys


def rel(path, base):
    r = os.path.relpath(path, base)
    return path if r.startswith("..") else r


def label(row):
    return row["method"] + ("+had" if row.get("rotate") else "")


def nmse(row):
    vals = [x for x in (row.get("k_nmse"), row.get("v_nmse")) if x is not None]
    return sum(vals) / len(vals) if vals else float("inf")


def score(row):
    kl = row.get("attn_kl")
    return (kl if kl is not None else float("inf"), nmse(row))


def figures(best, kivi):
    """attn KL, K/V NMSE and effective bits of best, KIVI's in parentheses."""
    def one(row, key):
        x = row.get(key)
        return "-" if x is None else f"{x:.2f}" if key == "eff_bits" else f"{x:.1e}"

    def pair(key, name):
        if best.get(key) is None:
            return None
        text = f"{name} {one(best, key)}"
        return text + (f" (kivi {one(kivi, key)})" if kivi is not None and kivi is not best else "")

    parts = [pair("attn_kl", "attn KL")]
    kv = f"{one(best, 'k_nmse')}/{one(best, 'v_nmse')}"
    if kivi is not None and kivi is not best:
        kv += f" ({one(kivi, 'k_nmse')}/{one(kivi, 'v_nmse')})"
    parts.append(f"K/V NMSE {kv}")
    parts.append(pair("eff_bits", "bits"))
    return ", ".join(p for p in parts if p)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.split("\n\n")[1])
    out = sys.argv[1]
    base = sys.argv[2] if len(sys.argv) == 3 else os.getcwd()
    with open(os.path.join(out, "eval.json")) as f:
        ev = json.load(f)
    with open(os.path.join(out, "report.json")) as f:
        rep = json.load(f)

    model = os.path.basename(ev.get("model", {}).get("file", "")) or ev.get("model", {}).get("name", "?")
    texts = [os.path.basename(t.get("path", "?")) for t in ev.get("provenance", {}).get("texts", [])]
    settings = ev.get("provenance", {}).get("settings", {})
    ref = ev["reference"]
    run = ev.get("run", {})
    lines = [f"pkv: summary of the main job ({model} on {', '.join(texts)})"]
    lines.append(
        f"  perplexity, fp16 KV cache: {ref['ppl_all']:.2f} over {run.get('n_tokens', '?')} tokens "
        f"(ctx {settings.get('ctx', '?')}); {ref['ppl']:.2f} at the {run.get('scored_decode', '?')} "
        "decode positions eval compares")

    by_bits = {}
    for row in rep.get("summary", []):
        by_bits.setdefault(row["bits"], []).append(row)
    evals = {m["spec"]: m for m in ev.get("methods", [])}
    for bits in (2, 4):
        rows = [r for r in by_bits.get(bits, []) if r["method"] != "fp16"]
        if not rows:
            continue
        best = min(rows, key=score)
        kivi = next((r for r in rows if r["method"] == "kivi" and not r.get("rotate")), None)
        lines.append(f"  {bits} bits: best {label(best)}: {figures(best, kivi)}")
        ppls = []
        for spec, m in evals.items():
            if m.get("bits") == bits:
                name = m.get("label", spec)
                if m.get("method") == "patternkv-table":
                    name = "pre-RoPE table" if ":pre:" in spec else "table"
                ppls.append(f"{name} {m['ppl']:.2f} ({m['ppl_delta_pct']:+.1f}%)")
        if ppls:
            lines.append(f"          eval perplexity (fp16 {ref['ppl']:.2f}): " + ", ".join(ppls))

    names = ("eval.md", "report.md", "calibrate.md", "calibrate-pre.md")
    files = [n for n in names if os.path.exists(os.path.join(out, n))]
    if files:
        lines.append("  full tables: " + ", ".join(rel(os.path.join(out, n), base) for n in files))
    html = os.path.join(out, "report.html")
    if os.path.exists(html):
        lines.append(f"  HTML report: {rel(html, base)} (open it in a browser: every layer and head, plots)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
