"""Training and sampling speed of the default sfs U-Net, with a diffusers UNet2DModel beside it.

    .venv/bin/pip install -r benchmarks/requirements.txt   # diffusers, for the comparison only
    .venv/bin/python benchmarks/bench_train.py              # CPU, a few minutes
    python benchmarks/bench_train.py --device cuda --batch-size 256 --out results/train_speed_cuda.md

Each case runs in its own process (clean thread settings and compile caches) with a time limit.
Training: forward + backward + AdamW step on a batch of noisy images, as in sfs.train.
Sampling: one no-grad forward pass of a batch; a 50-step DDIM grid costs 50 of them.
Prints a Markdown table and writes it, with the machine and date, to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CASES = {  # name: (implementation, dtype, channels_last, compile)
    "sfs fp32": ("sfs", "fp32", False, False),
    "sfs bf16 autocast": ("sfs", "bf16", False, False),
    "sfs channels_last": ("sfs", "fp32", True, False),
    "sfs torch.compile": ("sfs", "fp32", False, True),
    "diffusers fp32": ("diffusers", "fp32", False, False),
    "diffusers bf16 autocast": ("diffusers", "bf16", False, False),
}


def make_model(impl: str, num_classes: int | None = None) -> torch.nn.Module:
    """The default sfs UNet, or a diffusers UNet2DModel with the same layout and parameter count."""
    if impl == "sfs":
        from sfs.unet import UNet, UNetConfig
        return UNet(UNetConfig(num_classes=num_classes))
    from diffusers import UNet2DModel

    class Wrapped(torch.nn.Module):  # same call signature as sfs: model(x_t, t) -> eps_hat
        def __init__(self):
            super().__init__()
            self.net = UNet2DModel(
                sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                layers_per_block=2, norm_num_groups=8, attention_head_dim=16, dropout=0.1,
                down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))

        def forward(self, x_t, t, cond=None):
            return self.net(x_t, t).sample
    return Wrapped()


def run_case(name: str, device: str, batch_size: int, steps: int, threads: int | None) -> dict:
    """Time one case in this process; returns steps/s and images/s for training and sampling."""
    if threads:
        torch.set_num_threads(threads)
    impl, dtype, channels_last, compile_ = CASES[name]
    torch.manual_seed(0)
    dev = torch.device(device)
    model = make_model(impl).to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    x0 = torch.randn(batch_size, 1, 28, 28, device=dev).contiguous(memory_format=fmt)
    t = torch.randint(0, 1000, (batch_size,), device=dev)
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def train_step():
        with autocast():
            out = fwd(x0, t)
        loss = (out.float() - x0).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    @torch.no_grad()
    def sample_step():
        with autocast():
            fwd(x0, t)

    result = {"case": name, "params": sum(p.numel() for p in model.parameters())}
    for kind, fn in (("train", train_step), ("sample", sample_step)):
        model.train(kind == "train")
        t0 = time.perf_counter()
        fn()  # warm-up (compiles, if asked)
        fn()
        sync()
        result[f"{kind}_warmup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        per_step = (time.perf_counter() - t0) / steps
        result[f"{kind}_steps_s"] = 1 / per_step
        result[f"{kind}_img_s"] = batch_size / per_step
    return result


def machine() -> str:
    """CPU model and cores, or the GPU name."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per case (after 2 warm-up)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="intra-op thread counts to try for 'sfs fp32' (CPU only); the other "
                         "cases use the first")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--timeout", type=int, default=300, help="seconds per case")
    ap.add_argument("--out", default=str(HERE / "results" / "train_speed.md"))
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    ap.add_argument("--one-threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.device, args.batch_size, args.steps,
                                  args.one_threads or None)))
        return

    cpu = args.device == "cpu"
    jobs = []
    for name in args.cases:
        for threads in (args.threads if cpu and name == "sfs fp32" else args.threads[:1]):
            jobs.append((name, threads if cpu else 0))
    load_before = os.getloadavg()
    rows = []
    for name, threads in jobs:
        cmd = [sys.executable, __file__, "--case", name, "--device", args.device,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--one-threads", str(threads)]
        label = f"{name} ({threads} thread{'s' * (threads > 1)})" if threads else name
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            if proc.returncode:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
                row = {"case": label, "error": f"failed: {err}"}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"case": label}
        except subprocess.TimeoutExpired:
            row = {"case": label, "error": f"timed out after {args.timeout} s (compile warm-up?)"}
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    load_after = os.getloadavg()

    base = next((r for r in rows if "train_img_s" in r), None)
    lines = ["| case | params | train steps/s | train img/s | vs first | sample img/s "
             "(one forward) | 50-step DDIM img/s | warm-up s (train) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | | | | | | | {r['error']} |")
            continue
        rel = r["train_img_s"] / base["train_img_s"] if base else float("nan")
        lines.append(f"| {r['case']} | {r['params']:,} | {r['train_steps_s']:.2f} | "
                     f"{r['train_img_s']:.0f} | {rel:.2f}x | {r['sample_img_s']:.0f} | "
                     f"{r['sample_img_s'] / 50:.1f} | {r['train_warmup_s']:.1f} |")
    table = "\n".join(lines)
    where = (torch.cuda.get_device_name() if args.device.startswith("cuda") else machine())
    header = [f"# Training and sampling speed, {args.device}", "",
              f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
              f"- machine: {where}; torch {torch.__version__}",
              f"- batch {args.batch_size}, {args.steps} timed steps per case after 2 warm-up steps",
              f"- load average before / after: {load_before[0]:.1f} / {load_after[0]:.1f}"
              + (" (shared machine: other engineers' jobs ran at the same time, so absolute "
                 "numbers are noisy; compare rows, and rerun on a quiet machine)" if cpu else ""),
              f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
              ""]
    text = "\n".join(header) + "\n" + table + "\n"
    print("\n" + text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
