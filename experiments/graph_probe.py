"""Bisect why the GAN iteration captured as one CUDA graph fails on replay (CUDA only).

The benchmark's `GraphedStep` captures the whole iteration (critic steps with the gradient
penalty's double backward, generator steps, two Adam optimizers). On an H200 the capture succeeded
but the first replay hit "an illegal memory access" (results/perf/gpu_h200_session6/). This runs
variants of the iteration, each in its own process (a failed capture or replay poisons the
process's CUDA context), from the smallest (default preset, 1 critic + 1 generator step, every
speed switch off, no dropout) to the paper preset with the CUDA defaults, and prints one JSON line
per variant: captured?, replayed (5 times, losses finite)?, eager and graphed ms per iteration.

    python experiments/graph_probe.py [--out probe.jsonl] [--sanitize]

`--sanitize` runs the first variant that failed (capture, replay or crash) once more under
compute-sanitizer (memcheck), which names the kernel that reads or writes out of bounds.
`--budget` bounds the variants' total time (the sanitizer run gets up to 4 x `--timeout` more).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_gan_step import OFF  # noqa: E402  (every speed switch off)

NO_DROPOUT = ("model.encoder.dropout=0", "model.critic.dropout=0")
ONE_ONE = ("objective.n_critic=1", "objective.n_gen=1")

# name -> (preset, trainer overrides (None: the config's defaults), other overrides, batch)
VARIANTS = {
    "small_plain_1+1_nodrop": ("default", OFF, ONE_ONE + NO_DROPOUT, 8),
    "small_plain_1+1": ("default", OFF, ONE_ONE, 8),
    "small_plain": ("default", OFF, (), 8),
    "small_fused_adam": ("default", OFF | {"fused_adam": True}, (), 8),
    "small_cudnn_benchmark": ("default", OFF | {"cudnn_benchmark": True}, (), 8),
    "small_channels_last": ("default", OFF | {"channels_last": True}, (), 8),
    "small_defaults": ("default", None, (), 8),
    "paper_plain": ("paper", OFF, (), 64),
    "paper_defaults": ("paper", None, (), 64),
    "paper_defaults_nodrop": ("paper", None, NO_DROPOUT, 64),
    "paper_defaults_nobench": ("paper", {"cudnn_benchmark": False}, (), 64),
    "paper_defaults_subpixel": ("paper", {"subpixel": True}, (), 64),
}


def run_one(name: str) -> dict:
    import torch
    from bench_gan_step import PRESETS, GraphedStep, Setting, compose, make_step, random_stream

    preset, trainer, overrides, batch = VARIANTS[name]
    setting = Setting(name, trainer, objective=tuple(overrides), cuda_graph=True)
    cfg = compose(PRESETS[preset]("pp_mir"), setting, "cuda")
    out = {"variant": name, "preset": preset, "batch": batch, "overrides": list(overrides)}
    with tempfile.TemporaryDirectory() as tmp:
        step, ctx = make_step(cfg, Path(tmp))
        stream = random_stream(batch, ctx.device)

        def timed(fn) -> float:
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn(stream)
            torch.cuda.synchronize()
            return 1000 * (time.perf_counter() - t)

        for _ in range(3):
            timed(step)
        out["eager_ms"] = round(statistics.median(timed(step) for _ in range(5)), 2)
        try:
            graphed = GraphedStep(step, stream)
            torch.cuda.synchronize()
            out["captured"] = True
        except Exception as exc:  # noqa: BLE001 - the failure is the result
            out |= {"captured": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            return out
        try:
            times, finite = [], True
            for _ in range(5):
                times.append(timed(graphed))
                finite &= all(bool(torch.isfinite(v).all()) for v in graphed.out.values())
            out |= {"replayed": True, "finite": finite, "graph_ms": round(min(times), 2)}
        except Exception as exc:  # noqa: BLE001
            out |= {"replayed": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--out", type=Path)
    p.add_argument("--timeout", type=int, default=90, help="seconds per variant")
    p.add_argument("--budget", type=int, default=420, help="seconds for all variants together")
    p.add_argument("--sanitize", action="store_true")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one)), flush=True)
        return
    failed, deadline = [], time.monotonic() + args.budget
    for name in args.variants:
        if time.monotonic() + 20 > deadline:
            print(json.dumps({"variant": name, "error": "skipped: --budget spent"}), flush=True)
            continue
        cmd = [sys.executable, __file__, "--one", name]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
            line = (
                json.loads(lines[-1])
                if lines
                else {"variant": name, "exit": proc.returncode, "stderr": proc.stderr[-600:]}
            )
        except subprocess.TimeoutExpired:
            line = {"variant": name, "error": f"timeout after {args.timeout} s"}
        if not line.get("replayed"):
            failed.append(name)
        text = json.dumps(line)
        print(text, flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(text + "\n")
    if args.sanitize and failed and shutil.which("compute-sanitizer"):
        name = failed[0]
        cmd = ["compute-sanitizer", "--tool", "memcheck", "--print-limit", "20"]
        cmd += [sys.executable, __file__, "--one", name]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=4 * args.timeout)
            report = proc.stdout[-6000:] + proc.stderr[-3000:]
        except subprocess.TimeoutExpired:
            report = "compute-sanitizer timed out"
        print(f"== compute-sanitizer memcheck, {name}\n{report}", flush=True)


if __name__ == "__main__":
    main()
