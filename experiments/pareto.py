"""Turn a multirun dir of the privacy-utility sweep into a Pareto table (pareto.md) and plot
(pareto.png), written into that dir.

    python experiments/pareto.py outputs/multirun/<date> [--x pp_mir/privacy_score]
                                                         [--y pp_mir/utility_score]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import yaml


def load_jobs(sweep: Path, x: str, y: str) -> list[dict]:
    jobs = []
    for job in sorted(sweep.iterdir(), key=lambda p: (len(p.name), p.name)):
        metrics, overrides = job / "metrics.json", job / ".hydra" / "overrides.yaml"
        if not metrics.is_file():
            continue
        m = json.loads(metrics.read_text())
        if x not in m or y not in m:
            sys.exit(f"{metrics}: no metric '{x}' or '{y}' (have {sorted(m)[:8]}...)")
        params = yaml.safe_load(overrides.read_text()) if overrides.is_file() else []
        jobs.append(
            {
                "job": job.name,
                "x": m[x],
                "y": m[y],
                "params": [p for p in params if "loss" in p or "lr" in p],
            }
        )
    return jobs


def pareto_front(jobs: list[dict]) -> list[dict]:
    """Jobs no other job beats on both objectives (both maximised)."""
    return [
        a
        for a in jobs
        if not any(
            b["x"] >= a["x"] and b["y"] >= a["y"] and (b["x"], b["y"]) != (a["x"], a["y"])
            for b in jobs
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a multirun dir (hydra.sweep.dir)")
    parser.add_argument("--x", default="pp_mir/privacy_score")
    parser.add_argument("--y", default="pp_mir/utility_score")
    args = parser.parse_args()
    if not args.sweep.is_dir():
        sys.exit(f"{args.sweep}: not a directory")
    jobs = load_jobs(args.sweep, args.x, args.y)
    if not jobs:
        sys.exit(f"{args.sweep}: no job with a metrics.json")
    front = pareto_front(jobs)
    lines = [
        f"# Pareto front of {args.sweep}",
        "",
        f"| job | {args.x} | {args.y} | on front | overrides |",
        "|---|---|---|---|---|",
    ]
    for j in sorted(jobs, key=lambda j: -j["x"]):
        lines.append(
            f"| {j['job']} | {j['x']:.3f} | {j['y']:.3f} | {'yes' if j in front else ''}"
            f" | {' '.join(j['params'])} |"
        )
    (args.sweep / "pareto.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    ax.scatter([j["x"] for j in jobs], [j["y"] for j in jobs], c="lightgrey", label="trials")
    pts = sorted((j["x"], j["y"]) for j in front)
    ax.plot(*zip(*pts), "o-", c="C3", label="Pareto front")
    ax.set_xlabel(args.x), ax.set_ylabel(args.y), ax.legend()
    fig.tight_layout()
    fig.savefig(args.sweep / "pareto.png")
    print(f"{len(front)} of {len(jobs)} trials on the front; wrote {args.sweep / 'pareto.md'}")


if __name__ == "__main__":
    main()
