"""Render bench/results.json as Markdown tables (one per GPU), for bench/RESULTS.md.

    python bench/results_table.py [--filter SUBSTRING]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def render(rows: list[dict], needle: str = "") -> str:
    by_gpu = defaultdict(list)
    for r in rows:
        if needle in r["name"]:
            by_gpu[r["gpu"]].append(r)
    out = []
    for gpu, rs in by_gpu.items():
        v = rs[0]["versions"]
        out.append(f"**{gpu}** — torch {v.get('torch')}, CUDA {v.get('cuda')}, "
                   f"triton {v.get('triton')}, Python {v.get('python')}\n")
        out.append("| figure | value | baseline | ratio | date | command |")
        out.append("|---|---|---|---|---|---|")
        for r in rs:
            out.append(
                f"| {r['name']} | {r['value']:.4g} {r['metric']} | {r['baseline']}: "
                f"{r['baseline_value']:.4g} | **{r['ratio']:.2f}x** | {r['date']} | `{r['command']}` |"
            )
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--filter", default="")
    ap.add_argument("--results", default=str(Path(__file__).with_name("results.json")))
    a = ap.parse_args()
    print(render(json.loads(Path(a.results).read_text()), a.filter))


if __name__ == "__main__":
    main()
