"""The GPU check's pieces that run anywhere: the device kit's int8 model packing and the
throughput run (here on the CPU, with a handful of prompts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import gpu_throughput

ROOT = Path(__file__).resolve().parents[2]


def _device_kit():
    spec = importlib.util.spec_from_file_location("device_kit", ROOT / "scripts" / "device_kit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_kit"] = module
    spec.loader.exec_module(module)
    return module


def test_int8_packing_round_trips_within_one_step_per_row(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    kit = _device_kit()
    rng = np.random.default_rng(0)
    weights = {
        "encoder.dense.weight": torch.from_numpy(rng.standard_normal((96, 64)).astype(np.float32)),
        "encoder.dense.bias": torch.from_numpy(rng.standard_normal(96).astype(np.float32)),
        "encoder.zero.weight": torch.zeros((80, 64)),  # an all-zero row must not divide by zero
    }
    save_file(weights, str(tmp_path / "w.safetensors"))
    counts = kit.quantize_weights(tmp_path / "w.safetensors", tmp_path / "q.safetensors")
    assert counts == {"int8": 2, "float16": 1}
    kit.dequantize_weights(tmp_path / "q.safetensors", tmp_path / "back.safetensors")
    back = load_file(str(tmp_path / "back.safetensors"))
    assert set(back) == set(weights)
    for name, original in weights.items():
        assert back[name].dtype == torch.float32 and back[name].shape == original.shape
        if original.ndim == 2:  # int8 rows: within half a step of each row's scale
            step = original.abs().amax(dim=1, keepdim=True) / 127.0
            assert bool(((back[name] - original).abs() <= step / 2 + 1e-7).all())
        else:  # float16
            assert torch.allclose(back[name], original, rtol=1e-3, atol=1e-3)
    assert torch.count_nonzero(back["encoder.zero.weight"]) == 0


def test_vocabulary_prompts_are_distinct_and_seeded():
    a = gpu_throughput.vocabulary_prompts(300, seed=1)
    assert len(a) == len(set(a)) == 300
    assert a == gpu_throughput.vocabulary_prompts(300, seed=1)
    assert a != gpu_throughput.vocabulary_prompts(300, seed=2)
    assert all(6 <= len(p.split()) <= 40 for p in a)


def test_throughput_run_on_cpu_reports_every_phase(tmp_path):
    profile = tmp_path / "profile.txt"
    row = gpu_throughput.measure("cpu", n_prompts=48, batch=16, n_accounts=5, profile=profile)
    assert row["device"] == "cpu" and row["prompts"] == 48 and row["account_indexes"] == "host"
    for key in ("embed_prompts_per_s", "pipeline_prompts_per_s", "detection_queries_per_s"):
        assert row[key] > 0
    assert row["detection_us_per_query"] == pytest.approx(1e6 / row["detection_queries_per_s"], rel=0.01)
    text = profile.read_text()
    assert text.startswith("detection phase, 48 queries in batches of 16") and "function calls" in text
    assert "detect/" in text  # the engine's own functions are listed
    assert row["detection_share_of_embedding"] > 0
    # the pipeline engine holds the 16 warm-up prompts and the 48 timed ones
    assert row["stored_queries"] == 64


def test_sharded_run_on_cpu_counts_every_query_once():
    """Detection sharded over two account processes and one campaign process: every query
    reaches exactly one account detector, and an account always goes to the same one."""
    row = gpu_throughput.measure_sharded("cpu", n_prompts=64, batch=32, n_accounts=10, workers=2)
    assert row["detect_workers"] == 2 and row["prompts"] == 64
    assert row["end_to_end_prompts_per_s"] > 0 and row["account_detection_us_per_query"] > 0
    assert 0 < row["account_detector_busy_share_max"] <= 1 and 0 < row["campaign_layer_busy_share"] <= 1
    assert 0 < row["parent_embedding_share"] < 1 and 0 <= row["parent_handing_out_share"] < 1
    assert row["parent_embedding_share"] + row["parent_handing_out_share"] <= 1.0 + 1e-9
    assert {gpu_throughput.shard_of(f"acct-{i}", 2) for i in range(40)} == {0, 1}
    assert gpu_throughput.shard_of("acct-7", 5) == gpu_throughput.shard_of("acct-7", 5)
