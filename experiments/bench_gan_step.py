"""Benchmark: PP-MIR / PP-SIR training iterations, timing the training loop's own step.

Each setting builds what `task=anonymizer` builds — the composed config with the setting's
`trainer.*` switches, a `RunContext` (backend flags), `ctx.resume` (channels_last, fused Adam,
compile on the networks and optimizers) and `ppgan.gan.anonymizer_step` with `ctx.autocast` —
on random data of the paper's shape (batch 64, 64x64 RGB; the judges have random weights: speed
only). The settings of one preset are timed round-robin, one iteration each in turn, so a load
that comes and goes on a shared machine hits them alike; `ms_per_iter` is the median of
`--iters` iterations after `--warmup`.

Settings (each alone, then combined):
  reference      plain fp32 eager PyTorch with the original code's structure: three critic
                 updates per round (real, fake, penalty as separate optimizer steps)
  fp32           ppgan's step, every speed switch off
  bf16, channels_last, fused_adam; CUDA also cudnn_benchmark, tf32, compile
  fastest        every switch that is on in the fastest combination for the device
  fastest_eager, fastest_cuda_graph   (CUDA) the same without compile; and captured as one
                 CUDA graph per iteration (GraphedStep, benchmark only)
  fastest_gp4    `fastest` with the lazy penalty objective.gp_every=4 (changes the method)
  default        trainer.* as conf/trainer/default.yaml has them (what a plain run gets)

One JSON line per setting (a setting that fails prints its error instead), then one summary line
per preset with each setting's time relative to `reference`:

    python experiments/bench_gan_step.py [--device cpu|cuda] [--iters 5] [--warmup 2]
        [--objectives pp_mir pp_sir] [--presets default paper] [--settings ...] [--out f.jsonl]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ppgan.config import compose_config
from ppgan.engine import RunContext, Selection, build, build_model
from ppgan.engine.judges import Judges
from ppgan.gan import GanStep, anonymizer_step
from ppgan.models.classifier import Classifier
from ppgan.models.siamese import EmbeddingNet

SHAPE = [3, 64, 64]
# Every switch off: the fp32 eager baseline.
OFF = {
    "amp": False,
    "channels_last": False,
    "cudnn_benchmark": False,
    "tf32": False,
    "fused_adam": False,
    "subpixel": False,
    "compile": False,
}
CPU_FASTEST = {"amp": True, "channels_last": True, "fused_adam": True}
CUDA_FASTEST = CPU_FASTEST | {"cudnn_benchmark": True, "tf32": True, "compile": True}


@dataclass(frozen=True)
class Setting:
    name: str
    trainer: dict  # trainer.* overrides on top of the config's defaults; None = those alone
    critic_updates: str = "combined"
    objective: tuple[str, ...] = ()
    cuda_graph: bool = False  # capture the whole iteration once, replay it (GraphedStep)


def settings_for(device: str) -> list[Setting]:
    cuda = device.startswith("cuda")
    fastest = CUDA_FASTEST if cuda else CPU_FASTEST
    alone = ["amp", "channels_last", "fused_adam", "subpixel"]
    alone += ["cudnn_benchmark", "tf32", "compile"] if cuda else []
    out = [Setting("reference", OFF, critic_updates="separate"), Setting("fp32", OFF)]
    out += [Setting("bf16" if k == "amp" else k, OFF | {k: True}) for k in alone]
    out.append(Setting("bf16+channels_last", OFF | {"amp": True, "channels_last": True}))
    out.append(Setting("fastest+subpixel", OFF | fastest | {"subpixel": True}))
    if cuda:  # compile is slow to start: also the fastest combination without it
        eager = OFF | fastest | {"compile": False}
        out.append(Setting("fastest_eager", eager))
        out.append(Setting("fastest_cuda_graph", eager, cuda_graph=True))
        # TF32 without autocast measured faster than bf16 on an H200 (results/perf/gpu_h200).
        out.append(Setting("default_cuda_graph", None, cuda_graph=True))
        # The CUDA defaults with stride-1 convolutions (trainer.subpixel), eager and graphed.
        out.append(Setting("default+subpixel", {"subpixel": True}))
        out.append(Setting("default+subpixel_cuda_graph", {"subpixel": True}, cuda_graph=True))
        out.append(Setting("fastest_eager+subpixel", eager | {"subpixel": True}))
        out.append(
            Setting(
                "fastest_eager+subpixel_cuda_graph", eager | {"subpixel": True}, cuda_graph=True
            )
        )
    # cuDNN's autotuner keys its cache on pointer alignment: a new key under capture would
    # benchmark (synchronise) inside the graph.
    if cuda:
        out.append(
            Setting("default_nobench_cuda_graph", {"cudnn_benchmark": False}, cuda_graph=True)
        )
    out.append(Setting("fastest", OFF | fastest))
    out.append(Setting("fastest_gp4", OFF | fastest, objective=("objective.gp_every=4",)))
    out.append(Setting("default", None))
    return out


PRESETS = {
    "default": lambda obj: [f"objective={obj}"],
    "paper": lambda obj: [f"experiment=paper_{obj}"],
}


class GraphedStep:
    """The loop's step captured once as one CUDA graph and replayed (benchmark only, to measure
    what removing the launch overhead of a few thousand small kernels per iteration is worth).

    The iteration's batches (`n_critic + n_gen`, + 1 for an adversary) are copied into static
    buffers before each replay; Adam runs `capturable` (its step count on the GPU); dropout and
    the penalty's random numbers come from the graph-safe CUDA generator, fresh each replay.
    Needs `gp_every=1` (one graph).
    """

    def __init__(self, step: GanStep, stream: Iterator[dict], warmup: int = 3):
        if step.gp_every != 1:
            raise ValueError("a CUDA graph replays one iteration: needs objective.gp_every=1")
        n_batches = step.n_critic + step.n_gen + (step.adversary is not None)
        self.static = [{k: v.clone() for k, v in next(stream).items()} for _ in range(n_batches)]
        for opt in (step.opt_c, step.opt_g):
            for group in opt.param_groups:
                group["capturable"] = True
            for p, state in opt.state.items():  # steps taken so far counted on the host
                if "step" in state:
                    state["step"] = torch.as_tensor(
                        state["step"], dtype=torch.float32, device=p.device
                    )
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (cuDNN plans, optimizer state) off the capture
            for _ in range(warmup):
                step(iter(self.static))
            # An op that synchronises with the host cannot be captured: find it with a traceback.
            torch.cuda.set_sync_debug_mode("error")
            try:
                step(iter(self.static))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = step(iter(self.static))

    def __call__(self, stream: Iterator[dict]) -> dict:
        for dst in self.static:
            for k, v in next(stream).items():
                dst[k].copy_(v, non_blocking=True)
        self.graph.replay()
        return {k: v.clone() for k, v in self.out.items()}


@dataclass
class Case:
    """One setting, built: the loop's step, its context and stream."""

    setting: Setting
    step: GanStep | GraphedStep
    ctx: RunContext
    stream: Iterator[dict]
    cfg: object
    times: list[float]
    flops: int | None = None
    peak_mem: int | None = None


def compose(preset: list[str], setting: Setting, device: str):
    trainer = [f"trainer.{k}={v}" for k, v in (setting.trainer or {}).items()]
    return compose_config(
        ["task=anonymizer", *preset, f"trainer.device={device}", *trainer, *setting.objective]
    )


def make_step(cfg, out_dir: Path, n_ids: int = 40) -> tuple[GanStep, RunContext]:
    """What `task=anonymizer` builds for `cfg` (ppgan/tasks/anonymizer.py), on random judges."""
    ctx = RunContext(cfg, out_dir)
    device, m = ctx.device, cfg.model
    enc, enc_spec = build_model(m.encoder, in_shape=SHAPE)
    dec, dec_spec = build_model(m.decoder, in_shape=SHAPE)
    critic, critic_spec = build_model(m.critic, in_shape=SHAPE)
    for net in (enc, dec, critic):
        net.to(device)

    def frozen(net: torch.nn.Module) -> torch.nn.Module:
        return net.to(device).eval().requires_grad_(False)

    judges = Judges(
        disease=frozen(Classifier(SHAPE, 2)),
        identity=frozen(Classifier(SHAPE, n_ids)),
        siamese=frozen(EmbeddingNet(SHAPE)),
    )
    opt_g = build(cfg.optimizer, params=[*enc.parameters(), *dec.parameters()])
    opt_c = build(cfg.critic_optimizer, params=critic.parameters())
    nets = {"encoder": (enc, enc_spec), "decoder": (dec, dec_spec), "critic": (critic, critic_spec)}
    ctx.resume(nets, {"opt_g": opt_g, "opt_c": opt_c}, Selection(patience=0))
    with torch.no_grad():
        refs = judges.siamese(torch.rand(n_ids, *SHAPE, device=device) * 2 - 1).float()
    step = anonymizer_step(
        enc, dec, critic, opt_g, opt_c, judges, cfg.objective, refs, ctx.autocast
    )
    return step, ctx


def random_stream(batch: int, device: torch.device) -> Iterator[dict]:
    images = torch.rand(batch, *SHAPE, device=device) * 2 - 1
    b = {"images": images, "masks": torch.ones(batch, 1, *SHAPE[1:], device=device)}
    while True:
        yield b


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_now(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _rss("VmRSS")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets this process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _rss("VmHWM")


def _rss(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# `wall` (default) or `process`: this process's CPU time, which a shared machine's other jobs do
# not inflate (meaningful on the CPU with --threads 1, where CPU time is the compute time).
CLOCK = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCK["wall"]


def timed(case: Case) -> float:
    case.ctx.speed.apply_backends()  # the settings share the process-wide backend flags
    device = case.ctx.device
    sync(device)
    start = clock()
    case.step(case.stream)
    sync(device)
    return clock() - start


def build_case(preset: list[str], setting: Setting, device: str, batch: int, tmp: Path) -> Case:
    cfg = compose(preset, setting, device)
    dev = torch.device(device)
    before = memory_now(dev)
    reset_peak(dev)
    step, ctx = make_step(cfg, tmp / setting.name)
    step.critic_updates = setting.critic_updates
    case = Case(setting, step, ctx, random_stream(batch, ctx.device), cfg, [])
    if not cfg.trainer.compile:
        # FLOPs of one iteration (compiled graphs hide their ops from the counter).
        counter = FlopCounterMode(display=False)
        counter.mod_tracker = _GlobalOnly()
        with counter:
            timed(case)
        case.flops = int(counter.get_total_flops())
    else:
        timed(case)
    if setting.cuda_graph:
        case.step = GraphedStep(step, case.stream)
    # The setting's own peak: its networks, optimizer state and one iteration's transients.
    case.peak_mem = peak_memory(dev) - before
    return case


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker, whose backward hooks break
    `autograd.grad` (the gradient penalty); only the global total is needed here."""

    parents = {"Global"}

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc) -> None:
        return None


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def record(case: Case, preset: str, objective: str, device: str, batch: int) -> dict:
    ms = 1000 * statistics.median(case.times)
    obj, sp = case.cfg.objective, case.ctx.speed  # the switches in effect on this device
    amp = sp.amp_dtype
    out = {
        "preset": preset,
        "objective": objective,
        "setting": case.setting.name,
        "ms_per_iter": round(ms, 2),
        "iters_per_s": round(1000 / ms, 3),
        "flops_per_iter": case.flops,
        "tflops_per_s": None if case.flops is None else round(case.flops / ms / 1e9, 3),
        "peak_mem_bytes": case.peak_mem,
        "peak_mem_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "peak RSS",
        "device": device_name(device),
        "dtype": str(amp).replace("torch.", "") if amp else "float32",
        "trainer": {k: getattr(sp, k) for k in OFF if k != "amp"} | {"amp": amp is not None},
        "critic_updates": case.setting.critic_updates,
        "gp_every": int(obj.get("gp_every", 1)),
        "batch": batch,
        "n_critic": int(obj.n_critic),
        "n_gen": int(obj.n_gen),
        "iters": len(case.times),
        "clock": next(k for k, v in CLOCK.items() if v is clock),
        "ms_all": [round(1000 * t, 1) for t in case.times],
        "torch": torch.__version__,
    }
    return out


def measure(settings, overrides, args, tmp: Path, preset, objective, emit) -> list[Case]:
    """Build, warm up and time `settings` round-robin (one iteration each in turn); profile those
    named in `--profile`. A setting that fails is reported and dropped; after a failed CUDA-graph
    capture the group stops (the capture can leave the CUDA RNG unusable)."""
    cases: list[Case] = []
    for setting in settings:
        try:
            case = build_case(overrides, setting, args.device, args.batch, tmp)
            for _ in range(args.warmup):
                timed(case)
            cases.append(case)
        except Exception as exc:  # a setting that fails is a result, not a crash
            traceback.print_exc()
            emit(error_line(preset, objective, setting.name, args.device, exc))
            if setting.cuda_graph:
                break
    for _ in range(args.iters):
        for case in list(cases):
            try:
                case.times.append(timed(case))
            except Exception as exc:
                emit(error_line(preset, objective, case.setting.name, args.device, exc))
                cases.remove(case)
    for case in [c for c in cases if c.setting.name in (args.profile or ())]:
        write_profile(case, f"{objective} {preset} {case.setting.name}", args.profile_out)
    return cases


def run_preset(args, objective: str, preset: str, emit) -> None:
    overrides = PRESETS[preset](objective)
    wanted = [s for s in settings_for(args.device) if not args.settings or s.name in args.settings]
    cases: list[Case] = []
    with tempfile.TemporaryDirectory() as tmp:
        # Eager settings are timed (and profiled) before any CUDA graph is captured: a failed
        # capture or replay can leave the process's CUDA context unusable for everything after.
        for graphs in (False, True):
            group = [s for s in wanted if s.cuda_graph == graphs]
            cases += measure(group, overrides, args, Path(tmp), preset, objective, emit)
    lines = [record(c, preset, objective, args.device, args.batch) for c in cases]
    ref = next((r["ms_per_iter"] for r in lines if r["setting"] == "reference"), None)
    for line in lines:
        # TFLOP/s of the iteration's useful work: the plain iteration's FLOPs (a compiled
        # setting hides its ops from the counter; subpixel also computes rows it then crops).
        plain = [
            r
            for r in lines
            if r["flops_per_iter"]
            and r["gp_every"] == line["gp_every"]
            and not r["trainer"]["subpixel"]
        ]
        if plain:
            useful = plain[0]["flops_per_iter"]
            line["flops_per_iter"] = line["flops_per_iter"] or useful
            line["useful_flops_per_iter"] = useful
            line["tflops_per_s"] = round(useful / line["ms_per_iter"] / 1e9, 3)
        line["ratio_to_reference"] = round(line["ms_per_iter"] / ref, 3) if ref else None
        emit(line)
    if lines:
        same_method = [r for r in lines if r["gp_every"] == 1 and r["setting"] != "reference"]
        best = min(same_method or lines, key=lambda r: r["ms_per_iter"])
        emit(
            {
                "summary": f"{objective} {preset}",
                "device": lines[0]["device"],
                "ms_per_iter": {r["setting"]: r["ms_per_iter"] for r in lines},
                "ratio_to_reference": {r["setting"]: r["ratio_to_reference"] for r in lines},
                "fastest": best["setting"],
                "fastest_ms": best["ms_per_iter"],
                "fastest_ratio_to_reference": best["ratio_to_reference"],
            }
        )


def write_profile(case: Case, title: str, out: Path | None) -> None:
    """torch.profiler's table of one more iteration: where the time goes, op by op."""
    from torch.profiler import ProfilerActivity, profile

    cuda = case.ctx.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        seconds = timed(case)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    # Busy time of the device (sum of kernels' self time) against the iteration's wall time: far
    # below it means the host's launches, not the kernels, set the pace.
    if cuda:  # kernels, memcpys, memsets only: an op's self time repeats its kernels'
        from torch.autograd import DeviceType

        device_events = [e for e in averages if e.device_type == DeviceType.CUDA]
        busy_ms = sum(e.self_device_time_total for e in device_events) / 1000
        n_kernels = sum(e.count for e in device_events)
    else:
        busy_ms = sum(e.self_cpu_time_total for e in averages) / 1000
    text = (
        f"# {title}: wall {1000 * seconds:.1f} ms under the profiler, "
        f"{'device' if cuda else 'cpu'} self time {busy_ms:.1f} ms"
        + (f", {n_kernels} kernels, copies and memsets" if cuda else "")
        + "\n"
        + averages.table(sort_by=key, row_limit=40)
    )
    text += "\n" + prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=25)
    if out is None:
        print(text, file=sys.stderr)
    else:
        with out.open("a") as f:
            f.write(text + "\n")


def error_line(preset: str, objective: str, setting: str, device: str, exc: Exception) -> dict:
    last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
    return {
        "preset": preset,
        "objective": objective,
        "setting": setting,
        "device": device,
        "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}",
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per setting (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per setting")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--objectives", nargs="+", default=["pp_mir", "pp_sir"])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--settings", nargs="+", help="only these settings (default: all)")
    p.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--clock", choices=list(CLOCK), default="wall")
    p.add_argument(
        "--profile",
        nargs="+",
        metavar="SETTING",
        help="profile one more iteration of each of these settings",
    )
    p.add_argument("--profile-out", type=Path, help="append the profile here (default: stderr)")
    args = p.parse_args(argv)
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    known = {s.name for s in settings_for(args.device)}
    if unknown := set(args.settings or ()) - known:
        p.error(f"unknown settings {sorted(unknown)} for {args.device}; known: {sorted(known)}")

    def emit(line: dict) -> None:
        text = json.dumps(line)
        print(text, flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(text + "\n")

    for objective in args.objectives:
        for preset in args.presets:
            run_preset(args, objective, preset, emit)


if __name__ == "__main__":
    sys.exit(main())
