"""Plots wall time against segments for each contender from bench/scale.py's CSV (BENCH_CSV).

Usage: python bench/plot.py results.csv docs/bench-scale.png
The newest row of each (segments, contender) pair is plotted.
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
latest = {}
for row in csv.DictReader(open(src)):
    latest[(int(row["segments"]), row["contender"])] = float(row["wall_s"])
fig, ax = plt.subplots(figsize=(6.4, 4))
for name in sorted({c for _, c in latest}):
    pts = sorted((s, w) for (s, c), w in latest.items() if c == name)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("segments (5,000,000 segment rows in total)")
ax.set_ylabel("wall time, s (2 cores)")
ax.set_title("The whole job: join 10,000,000 source rows into S segments")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
