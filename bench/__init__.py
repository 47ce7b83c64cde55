"""probewatch benchmarks: detection (traffic, baselines, eval) and speed/memory (test_perf.py)."""
