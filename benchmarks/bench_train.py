"""Training speed of sfs U-Nets on this machine, as images/s and as a fraction of its own peak.

    .venv/bin/python benchmarks/bench_train.py                  # CPU: a few minutes, quiet machine
    .venv/bin/python benchmarks/bench_train.py --quick --out /tmp/train_speed   # smoke test
    python benchmarks/bench_train.py --device cuda --threads 1 --batch-size 512 --out results/train_speed_cuda

In one run it measures, for each network (the default ``UNetConfig()`` and a lean one: channels
32/64/128, one residual block per level, attention only at 7x7, no dropout):

- the training step of ``sfs.train`` (q_sample at random t, forward, simple loss, backward,
  gradient clipping, AdamW, EMA update) on a random batch, in images/s, for
  threads 1 and 2 x fp32 and bf16 autocast, then at the most threads channels_last and
  ``torch.compile`` (each in fp32 and bf16). A case runs in its own process (clean thread
  settings and compile caches): a few untimed warm-up steps (a compile's warm-up is timed on its
  own, with a generous limit, so that the steady state is known; a compile that fails is
  recorded with its error), then timed steps for ``--seconds``;
- the FLOPs of one training image (forward and backward), counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention);
- the machine's own matmul peak in fp32 and bf16 at each thread count (the best of square
  ``torch.mm`` of a few sizes), so every row also reads as MFU: FLOPs per image x images/s over
  the peak of the row's dtype and thread count.

Validity. Timings on a machine that runs other jobs say little about the machine, so the run
records the CPU (``lscpu``: model name, the avx2 / avx512* / amx* flags) and the 1-minute load
average before and after, and it is VALID only if the load before is at most 0.5 (nothing else
running) and the load after at most the largest thread count used + 0.5 (nothing but this
benchmark ran meanwhile; inductor's compile workers are limited to one thread for this). An
invalid run is still printed and, marked INVALID with the reason, written to an ``--out`` given
explicitly; it is never written over the default ``results/train_speed.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "train_speed"
MODELS = {  # name: UNetConfig fields
    "default": {},
    "lean": dict(channel_mults=(1, 2, 4), num_res_blocks=1, attn_resolutions=(7,), dropout=0.0),
    # the "1.11 M parameters" lean net matches these channels (32/64/64), not 32/64/128:
    "lean-64": dict(channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,), dropout=0.0),
}
LOAD_BEFORE_MAX = 0.5  # 1-minute load average allowed before the run
LOAD_SLACK = 0.5       # ... and after it, above the largest thread count used


# ----------------------------------------------------------------------------------------------
# The machine.

def cpu_info() -> dict:
    """Model name, logical CPUs and the SIMD/matrix flags that decide bf16 speed, from lscpu."""
    info = {"model": None, "cpus": os.cpu_count(), "flags": []}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    if not text.strip():
        try:  # no lscpu: the same fields from /proc/cpuinfo
            text = Path("/proc/cpuinfo").read_text().replace("model name", "Model name", 1)
        except OSError:
            text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name" and info["model"] is None:
            info["model"] = value.strip()
        elif key.strip().lower() == "flags" and not info["flags"]:
            info["flags"] = sorted(f for f in value.split()
                                   if f == "avx2" or f.startswith(("avx512", "amx")))
    return info


def load_verdict(before: float, after: float, threads_used: int) -> str | None:
    """None when the run counts as measured on a quiet machine, else the reason it does not."""
    reasons = []
    if before > LOAD_BEFORE_MAX:
        reasons.append(f"load average {before:.2f} before the run > {LOAD_BEFORE_MAX}")
    if after > threads_used + LOAD_SLACK:
        reasons.append(f"load average {after:.2f} after the run > {threads_used} threads used "
                       f"+ {LOAD_SLACK}")
    return "; ".join(reasons) or None


# ----------------------------------------------------------------------------------------------
# One case, in its own process.

def flops_per_image(model_name: str, batch: int = 8) -> tuple[int, float]:
    """(parameters, FLOPs of one training image: forward + backward) of a network."""
    from torch.utils.flop_counter import FlopCounterMode
    from sfs.unet import UNet, UNetConfig, count_params
    model = UNet(UNetConfig(**MODELS[model_name]))
    x, t = torch.randn(batch, 1, 28, 28), torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False) as counter:
        model(x, t).pow(2).mean().backward()
    return count_params(model), counter.get_total_flops() / batch


def matmul_peak(device: str, seconds: float, sizes: tuple[int, ...]) -> dict:
    """Best FLOP/s of square torch.mm, fp32 and bf16, each size timed for about ``seconds``."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {}
    for dtype in ("fp32", "bf16"):
        best = 0.0
        for n in sizes:
            a = torch.randn(n, n, device=dev, dtype=torch.float32 if dtype == "fp32" else torch.bfloat16)
            b = torch.randn_like(a)
            torch.mm(a, b)  # warm-up
            sync()
            reps, t0 = 0, time.perf_counter()
            while reps == 0 or time.perf_counter() - t0 < seconds:
                torch.mm(a, b)
                reps += 1
            sync()
            best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
        out[dtype] = best
    return out


def time_training(spec: dict) -> dict:
    """images/s of sfs.train's training step for one case (see the module docstring)."""
    import copy
    from sfs.forward import q_sample
    from sfs.loop import ema_update
    from sfs.losses import simple_loss
    from sfs.schedules import cosine_schedule
    from sfs.unet import UNet, UNetConfig
    dev, B = torch.device(spec["device"]), spec["batch_size"]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    torch.manual_seed(0)
    model = UNet(UNetConfig(**MODELS[spec["model"]])).to(dev).to(memory_format=fmt)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=dev.type == "cuda")
    forward = torch.compile(model) if spec["compile"] else model
    schedule = cosine_schedule(1000).to(dev)
    g = torch.Generator(dev).manual_seed(0)
    x0 = torch.rand(B, 1, 28, 28, generator=g, device=dev).mul(2).sub(1).contiguous(memory_format=fmt)

    def step(i: int) -> None:
        t = torch.randint(0, 1000, (B,), generator=g, device=dev)
        eps = torch.randn(x0.shape, generator=g, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=spec["bf16"]):
            out = forward(q_sample(schedule, x0, t, eps), t)
        loss = simple_loss(out.float(), x0, eps, t, schedule)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, 0.999, i)

    t0 = time.perf_counter()
    for i in range(spec["warmup_steps"]):  # compiles (forward and backward), picks kernels
        step(i)
    sync()
    warmup_s = time.perf_counter() - t0
    steps, t0 = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - t0 < spec["seconds"]:
        step(spec["warmup_steps"] + steps)
        steps += 1
    sync()
    elapsed = time.perf_counter() - t0
    return {"warmup_s": warmup_s, "steps": steps, "img_s": B * steps / elapsed}


def run_child(spec: dict) -> dict:
    """The body of a child process: set the threads, run the case, return its JSON row."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    if spec["kind"] == "peak":
        return matmul_peak(spec["device"], spec["seconds"], tuple(spec["sizes"]))
    try:
        return time_training(spec)
    except Exception as e:  # a compile (or a bf16 kernel) that fails: recorded, not a crash
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"}


def in_child(spec: dict, timeout: float) -> dict:
    """Run ``spec`` in a fresh Python process with a time limit; its result or an error row."""
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS="1",  # our own load: `threads` cores
               PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
            row = {"error": f"exit status {proc.returncode}: {tail}"}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        row = {"error": f"timed out after {timeout:.0f} s"}
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


# ----------------------------------------------------------------------------------------------
# The whole run.

def plan(models: list[str], threads: list[int], no_compile: bool, quick: bool = False) -> list[dict]:
    """The training cases, in the order they run (``quick``: one compile case, the last net's fp32:
    a compile's warm-up takes minutes on a small CPU)."""
    top = max(threads)
    cases = []
    for m in models:
        compile_here = not no_compile and (not quick or m == models[-1])
        for t in threads:
            cases += [dict(model=m, threads=t, bf16=b, channels_last=False, compile=False)
                      for b in (False, True)]
        cases += [dict(model=m, threads=top, bf16=b, channels_last=True, compile=False)
                  for b in (False, True)]
        if compile_here:
            cases += [dict(model=m, threads=top, bf16=b, channels_last=False, compile=True)
                      for b in ((False,) if quick else (False, True))]
    return cases


def mfu_rows(rows: list[dict], flops: dict, peaks: dict) -> None:
    """Add achieved TFLOP/s, MFU and the speed-up over fp32 (same net, same threads) to each row."""
    for r in rows:
        if "img_s" not in r:
            continue
        achieved = flops[r["model"]]["flops_per_image"] * r["img_s"]
        peak = peaks.get(str(r["threads"]), {}).get("bf16" if r["bf16"] else "fp32")
        r["tflop_s"] = achieved / 1e12
        r["mfu"] = achieved / peak if peak else None
        base = next((b for b in rows if b["model"] == r["model"] and b["threads"] == r["threads"]
                     and not (b["bf16"] or b["channels_last"] or b["compile"]) and "img_s" in b), None)
        r["vs_fp32"] = r["img_s"] / base["img_s"] if base else None


def markdown(result: dict) -> str:
    """The results file: header (machine, date, command, load, verdict), peaks, the table."""
    m, verdict = result["machine"], result["invalid"]
    title = "# Training speed" + (" — INVALID (machine loaded)" if verdict else "")
    lines = [title, "",
             f"- date: {result['date']}",
             f"- machine: {m['cpu']['model']}, {m['cpu']['cpus']} logical CPUs; flags: "
             f"{' '.join(m['cpu']['flags']) or 'none of avx2/avx512*/amx*'}"
             + (f"; GPU {m['gpu']}" if m.get("gpu") else ""),
             f"- torch {m['torch']}, device {result['device']}, batch {result['batch_size']}, "
             f"{result['seconds']} s timed per case after {result['warmup_steps']} warm-up step(s)",
             f"- load average (1 min) before / after: {result['load_before'][0]:.2f} / "
             f"{result['load_after'][0]:.2f}; rule: valid if before <= {LOAD_BEFORE_MAX} and after "
             f"<= threads used ({max(result['threads'])}) + {LOAD_SLACK}",
             f"- verdict: {'INVALID: ' + verdict + ' (numbers below say little about this CPU)' if verdict else 'valid (quiet machine)'}",
             f"- command: `{result['command']}`", "",
             "Matmul peak of this machine (square torch.mm, best of sizes "
             f"{', '.join(map(str, result['peak_sizes']))}):", "",
             "| threads | fp32 TFLOP/s | bf16 TFLOP/s | bf16 / fp32 |", "| ---: | ---: | ---: | ---: |"]
    for t, p in result["peaks"].items():
        if "error" in p:
            lines.append(f"| {t} | {p['error']} | | |")
        else:
            lines.append(f"| {t} | {p['fp32'] / 1e12:.3f} | {p['bf16'] / 1e12:.3f} | "
                         f"{p['bf16'] / p['fp32']:.2f}x |")
    lines += ["", "| network | params | GFLOP / training image |", "| --- | ---: | ---: |"]
    for name, f in result["flops"].items():
        lines.append(f"| {name} | {f['params']:,} | {f['flops_per_image'] / 1e9:.3f} |")
    lines += ["", "Training step (sfs.train's: loss, backward, clipping, AdamW, EMA). MFU: achieved "
              "FLOP/s over the peak of the row's dtype (bf16 rows: bf16) and thread count.", "",
              "| network | threads | precision | channels_last | compile | warm-up s | img/s | "
              "vs fp32 | TFLOP/s | MFU | load at start |",
              "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        head = (f"| {r['model']} | {r['threads']} | {'bf16 autocast' if r['bf16'] else 'fp32'} | "
                f"{'yes' if r['channels_last'] else ''} | {'yes' if r['compile'] else ''} |")
        if "error" in r:
            lines.append(f"{head} | {r['error']} | | | | | {r['load_start']:.2f} |")
            continue
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else ""
        vs = f"{r['vs_fp32']:.2f}x" if r.get("vs_fp32") is not None else ""
        lines.append(f"{head} {r['warmup_s']:.1f} | {r['img_s']:.1f} | {vs} | {r['tflop_s']:.3f} | "
                     f"{mfu} | {r['load_start']:.2f} |")
    if any((r.get("mfu") or 0) > 1 for r in result["rows"]):
        lines += ["", "An MFU above 100 % means the peak was measured low: other jobs ran during "
                  "the peak measurement, or its matrices (--quick) were too small."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts")
    ap.add_argument("--models", nargs="+", default=["default", "lean"], choices=list(MODELS))
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per case")
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    ap.add_argument("--timeout", type=float, default=180, help="seconds per eager case")
    ap.add_argument("--compile-timeout", type=float, default=900, help="seconds per compile case")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: batch 16, 0.5 s per case, one warm-up step, small matmuls, "
                         "one compile case")
    ap.add_argument("--out", default=None,
                    help=f"path stem of the .md and .json (default {DEFAULT_OUT.relative_to(HERE.parent)}, "
                         "written only when the run is valid)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    for name in ("batch_size", "seconds", "timeout", "compile_timeout"):
        if getattr(args, name) <= 0:
            ap.error(f"argument --{name.replace('_', '-')}: must be > 0, got {getattr(args, name)}")
    if args.warmup_steps < 1 or min(args.threads) < 1:
        ap.error("argument --warmup-steps and --threads: each must be >= 1")
    if args.quick:
        args.batch_size, args.seconds, args.warmup_steps = 16, 0.5, 1
    sizes = (256, 512) if args.quick else (1024, 2048)
    cpu = args.device == "cpu"
    threads = sorted(set(args.threads)) if cpu else [0]

    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    peaks = {str(t): in_child({"kind": "peak", "device": args.device, "threads": t,
                               "seconds": 0.3 if args.quick else 1.0, "sizes": sizes}, args.timeout)
             for t in threads}
    flops = {}
    for name in args.models:
        params, f = flops_per_image(name)
        flops[name] = {"params": params, "flops_per_image": f}
    rows = []
    for case in plan(args.models, threads, args.no_compile, args.quick):
        spec = dict(case, kind="train", device=args.device, batch_size=args.batch_size,
                    seconds=args.seconds, warmup_steps=args.warmup_steps)
        load_start = os.getloadavg()[0]
        row = dict(case, load_start=load_start,
                   **in_child(spec, args.compile_timeout if case["compile"] else args.timeout))
        rows.append(row)
        print(json.dumps(row), flush=True)
    load_after = os.getloadavg()
    mfu_rows(rows, flops, peaks)

    invalid = load_verdict(load_before[0], load_after[0], max(threads) or 1) if cpu else None
    result = {
        "date": started.isoformat(timespec="minutes"), "device": args.device,
        "machine": {"cpu": cpu_info(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]),
        "batch_size": args.batch_size, "seconds": args.seconds, "warmup_steps": args.warmup_steps,
        "threads": threads, "load_before": load_before, "load_after": load_after,
        "valid": invalid is None, "invalid": invalid, "peak_sizes": sizes, "peaks": peaks,
        "flops": flops, "rows": rows,
    }
    text = markdown(result)
    print("\n" + text)
    if invalid and args.out is None:
        print(f"not written: {invalid}. Rerun on a quiet machine, or give --out to keep this "
              "run marked INVALID.", file=sys.stderr)
        sys.exit(3)
    stem = Path(args.out) if args.out else DEFAULT_OUT
    stem = stem.with_suffix("") if stem.suffix in (".md", ".json") else stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
    main()
