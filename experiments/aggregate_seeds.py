"""Aggregate a multirun over seeds into mean ± sd per metric (seeds.md and seeds.json in it).

    python -m ppgan -m seed=0,1,2                       # the pipeline once per seed
    python experiments/aggregate_seeds.py outputs/multirun/<date> [--match pp_mir/ --match chance/]

Each job dir of the multirun holds a `metrics.json` (the pipeline's: its evaluation's metrics).
Bootstrap bounds (`*_ci_lo`, `*_ci_hi`) are left out: they describe one run's test images, the
spread over seeds describes training; both are reported, neither replaces the other.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np


def load_runs(sweep: Path) -> dict[str, dict[str, float]]:
    """{job name: metrics} of every job dir under `sweep` that finished (has metrics.json)."""
    runs = {}
    for job in sorted(sweep.iterdir(), key=lambda p: (len(p.name), p.name)):
        path = job / "metrics.json"
        if path.is_file():
            runs[job.name] = json.loads(path.read_text())
    return runs


def aggregate(runs: dict[str, dict[str, float]], match: list[str] | None = None) -> dict:
    """{metric: {mean, sd, n}} over the runs that report it (sd: sample standard deviation,
    ddof=1; NaN with one run). Non-finite values are left out of a metric's statistics."""
    keys = sorted({k for m in runs.values() for k in m})
    out = {}
    for key in keys:
        if key.endswith(("_ci_lo", "_ci_hi")) or (match and not any(s in key for s in match)):
            continue
        values = np.array([m[key] for m in runs.values() if key in m], dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            continue
        sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        out[key] = {"mean": float(values.mean()), "sd": sd, "n": len(values)}
    return out


def to_markdown(stats: dict, n_runs: int) -> str:
    lines = [
        f"# Mean ± sd over {n_runs} runs",
        "",
        "| metric | mean ± sd | runs |",
        "|---|---|---|",
    ]
    for key, s in stats.items():
        sd = "–" if math.isnan(s["sd"]) else f"{s['sd']:.3f}"
        lines.append(f"| {key} | {s['mean']:.3f} ± {sd} | {s['n']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a multirun dir (hydra.sweep.dir)")
    parser.add_argument("--match", action="append", help="keep metrics containing this text")
    args = parser.parse_args()
    if not args.sweep.is_dir():
        sys.exit(f"{args.sweep}: not a directory")
    runs = load_runs(args.sweep)
    if not runs:
        sys.exit(f"{args.sweep}: no job dir with a metrics.json")
    stats = aggregate(runs, args.match)
    (args.sweep / "seeds.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    (args.sweep / "seeds.md").write_text(to_markdown(stats, len(runs)))
    print(f"{len(runs)} runs, {len(stats)} metrics -> {args.sweep / 'seeds.md'}")


if __name__ == "__main__":
    main()
