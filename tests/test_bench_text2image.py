"""benchmarks/bench_text2image.py's rule for accuracy against steps: a continued model keeps the
points its init's lineage measured earlier (their snapshots may be gone), and only those."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench_text2image", ROOT / "benchmarks" / "bench_text2image.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

SAME = {"n": 300, "w": 3.0, "sampler_steps": 20}


def point(step, acc, **kw):
    return {"step": step, "whole": acc, **SAME, **kw}


def test_earlier_points_up_to_the_init_join_and_later_or_other_settings_do_not():
    kept = {"seen, step 1000": point(1000, 0.1),
            "seen, step 2000": point(2000, 0.2),               # = start: the init itself
            "seen, step 2500": point(2500, 0.9),               # after the init: another lineage
            "held_out, step 1000": point(1000, 0.05, n=100),   # another N
            "held_out, step 1500": point(1500, 0.07, w=5.0),   # another scale
            "seen, step 1200": point(1200, 0.15, sampler_steps=50)}
    now = {"seen, step 3000": point(3000, 0.4), "seen, step 2000": point(2000, 0.25)}  # remeasured
    out = bench.with_earlier_points(now, kept, start=2000, same=SAME)
    assert list(out) == ["seen, step 1000", "seen, step 2000", "seen, step 3000"]   # by step
    assert out["seen, step 2000"]["whole"] == 0.25          # what was measured now wins
    assert [r["step"] for r in out.values()] == sorted(r["step"] for r in out.values())


def test_a_first_run_keeps_nothing_earlier():
    kept = {"seen, step 1000": point(1000, 0.1)}
    assert bench.with_earlier_points({}, kept, start=0, same=SAME) == {}
