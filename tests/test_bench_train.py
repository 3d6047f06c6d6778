"""benchmarks/bench_train.py without timing anything: the validity rule, the plan of cases, the CPU
flags read from lscpu, MFU, and that an invalid run says so."""

import importlib.util
import subprocess
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_train.py"
spec = importlib.util.spec_from_file_location("bench_train", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_load_rule():
    assert bench.load_verdict(0.3, 2.4, threads_used=2) is None
    assert bench.load_verdict(0.5, 2.5, threads_used=2) is None  # the limits themselves pass
    assert bench.load_verdict(0.6, 1.0, 2) == "load average 0.60 before the run > 0.5"
    assert bench.load_verdict(0.1, 2.6, 2) == "load average 2.60 after the run > 2 threads used + 0.5"
    assert "; " in bench.load_verdict(4.0, 5.0, 2)  # both reasons


def test_the_plan_covers_threads_precision_layout_and_compile():
    cases = bench.plan(["default", "lean"], [1, 2], no_compile=False)
    assert len(cases) == 2 * (2 * 2 + 2 + 2)
    lean = [c for c in cases if c["model"] == "lean"]
    assert {(c["threads"], c["bf16"]) for c in lean if not (c["channels_last"] or c["compile"])} \
        == {(1, False), (1, True), (2, False), (2, True)}
    assert all(c["threads"] == 2 for c in lean if c["channels_last"] or c["compile"])
    assert not any(c["compile"] for c in bench.plan(["lean"], [1, 2], no_compile=True))
    quick = [c for c in bench.plan(["default", "lean"], [1, 2], False, quick=True) if c["compile"]]
    assert quick == [dict(model="lean", threads=2, bf16=False, channels_last=False, compile=True)]


def test_cpu_flags_come_from_lscpu(monkeypatch):
    text = ("Model name:   AMD EPYC 9B14\nFlags: fpu sse2 avx2 avx512f avx512_bf16 amx_tile fma\n")
    monkeypatch.setattr(bench.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=text))
    info = bench.cpu_info()
    assert info["model"] == "AMD EPYC 9B14"
    assert info["flags"] == ["amx_tile", "avx2", "avx512_bf16", "avx512f"]


def test_mfu_and_an_invalid_run_marked_as_such():
    rows = [dict(model="lean", threads=1, bf16=False, channels_last=False, compile=False,
                 load_start=3.0, warmup_s=1.0, steps=4, img_s=100.0),
            dict(model="lean", threads=1, bf16=True, channels_last=False, compile=False,
                 load_start=3.0, warmup_s=1.0, steps=4, img_s=150.0),
            dict(model="lean", threads=1, bf16=False, channels_last=False, compile=True,
                 load_start=3.0, error="BackendCompilerFailed: no compiler")]
    flops = {"lean": {"params": 1000, "flops_per_image": 1e9}}
    peaks = {"1": {"fp32": 1e12, "bf16": 3e12}}
    bench.mfu_rows(rows, flops, peaks)
    assert rows[0]["mfu"] == pytest.approx(0.1) and rows[1]["mfu"] == pytest.approx(0.05)
    assert rows[1]["vs_fp32"] == pytest.approx(1.5) and "mfu" not in rows[2]
    result = {"machine": {"cpu": {"model": "X", "cpus": 2, "flags": ["avx2"]}, "torch": "2"},
              "invalid": "load average 3.00 before the run > 0.5", "date": "2026-12-02T01:00",
              "device": "cpu", "batch_size": 128, "seconds": 4, "warmup_steps": 2, "threads": [1],
              "load_before": (3.0, 2, 1), "load_after": (3.1, 2, 1), "command": "python b.py",
              "peak_sizes": (1024,), "peaks": peaks, "flops": flops, "rows": rows}
    text = bench.markdown(result)
    assert text.startswith("# Training speed — INVALID (machine loaded)")
    assert "verdict: INVALID: load average 3.00 before the run > 0.5" in text
    assert "| 10.0 % |" in text and "BackendCompilerFailed: no compiler" in text
