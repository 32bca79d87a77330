"""Cold vs warm dataset loads: what the decoded-array cache buys.

Loads ``folder:<archive>`` (default: ../shared/data/cifar10-jpeg.tar.gz, 60,000
32x32 JPEGs) cold, i.e. into a fresh empty cache directory (stream-decode
every JPEG, then write the cache), and warm (hash the archive, read the
cache). Reports medians, the ratio, every repeat, and the machine, to stdout
and to benchmarks/results/cache.md.

    python benchmarks/bench_cache.py [--archive PATH] [--cold 3] [--warm 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ntga.data import load_dataset_info  # noqa: E402

DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _load(spec: str, cache_dir: Path, expect_cached: bool) -> float:
    start = time.perf_counter()
    ds, info = load_dataset_info(spec, cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    if info.from_cache != expect_cached:
        raise RuntimeError(f"expected from_cache={expect_cached}, got {info.from_cache}")
    del ds
    return seconds


def run(archive: Path, cold: int, warm: int) -> dict:
    spec = f"folder:{archive}"
    load_before = os.getloadavg()
    cold_s, warm_s = [], []
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        for i in range(cold):
            cache_dir = Path(tmp) / f"cold-{i}"  # fresh, empty: a true cold load every time
            cold_s.append(_load(spec, cache_dir, expect_cached=False))
            print(f"cold {i + 1}/{cold}: {cold_s[-1]:.2f} s", flush=True)
        for i in range(warm):
            warm_s.append(_load(spec, cache_dir, expect_cached=True))
            print(f"warm {i + 1}/{warm}: {warm_s[-1]:.3f} s", flush=True)
        cache_mb = sum(p.stat().st_size for p in cache_dir.iterdir()) / 2**20
    return {
        "spec": spec,
        "archive_mb": archive.stat().st_size / 2**20,
        "cache_mb": cache_mb,
        "cold": cold_s,
        "warm": warm_s,
        "cold_median": statistics.median(cold_s),
        "warm_median": statistics.median(warm_s),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def report(r: dict, m: dict, command: str) -> str:
    ratio = r["cold_median"] / r["warm_median"]
    la = lambda t: ", ".join(f"{x:.2f}" for x in t)  # noqa: E731
    return f"""# Dataset cache: cold vs warm load

Command: `{command}`
Date: {datetime.datetime.now().isoformat(timespec="seconds")}

Dataset: `{r["spec"]}` ({r["archive_mb"]:.1f} MiB archive; cache file {r["cache_mb"]:.1f} MiB, uncompressed .npz)

| load | what it does | repeats | median (s) |
|---|---|---|---|
| cold | hash archive, stream-decode 60,000 JPEGs, write cache | {len(r["cold"])} | {r["cold_median"]:.2f} |
| warm | hash archive, read + validate cache | {len(r["warm"])} | {r["warm_median"]:.3f} |

**Warm is {ratio:.1f}x faster than cold** (target: at least 5x).

All repeats (s): cold {", ".join(f"{x:.2f}" for x in r["cold"])}; warm {", ".join(f"{x:.3f}" for x in r["warm"])}.

Machine: {m["platform"]}, {m["processor"]}, {m["cpu_count"]} CPUs; Python {m["python"]}, numpy {m["numpy"]}, Pillow {m["pillow"]}.
Load average before/after (1, 5, 15 min): {la(r["load_before"])} / {la(r["load_after"])}.

Note: this machine's 2 cores were shared with other jobs running at the same
time (see the load averages), so absolute times are inflated and noisy; cold
loads are CPU-bound (JPEG decoding) and suffer most, so the ratio on an idle
machine may differ. Decoding is single-threaded by design (see
`ntga/data/folder.py`).
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    p.add_argument("--cold", type=int, default=3)
    p.add_argument("--warm", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cache.md")
    args = p.parse_args(argv)
    if not args.archive.is_file():
        print(f"error: {args.archive} not found (pass --archive)", file=sys.stderr)
        return 2
    r = run(args.archive, args.cold, args.warm)
    command = " ".join(["python benchmarks/bench_cache.py", *(sys.argv[1:] if argv is None else argv)])
    text = report(r, machine(), command)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
