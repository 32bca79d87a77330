"""Clean CIFAR-10 test accuracy versus wall time of whole training runs, per victim.

Each *point* is one training run of ``ntga.train.train_and_evaluate`` with
a given victim, options and epoch count (so the learning-rate schedule always
completes), on one of two scales:

* ``12k``: the seed-0 stratified 12,000-image subset that experiments/ uses
  (``make_split(train_size=12000, target_size=2000, seed=0)``, as
  ``ntga.generate --train-size 12000 --target-size 2000`` picks it);
* ``50k``: all 50,000 training images.

The test set is always the full 10,000 images, evaluated once after the last
epoch (with the victim's test-time augmentation). Wall time is that of the
whole run: initialisation, compilation, every training step and the final
evaluation; loading and decoding the dataset is excluded (it is cached and
shared by all runs). Seeds run one after another in one process, and each
finished run is appended to a JSON-lines log at once, so a killed benchmark
resumes where it stopped (``--log``); ``--summarize`` turns the log into
``benchmarks/results/fast-resnet.md``.

ResNet-18 is too slow to train here (11 images/s, benchmarks/results/victims.md):
its row is an extrapolation from a measured throughput (``--resnet18-steps``
timed steps), not a run, and is marked as such.

    python benchmarks/bench_victim_accuracy.py --plan 12k --plan 50k --plan 12k-curve --resnet18-steps 3
    python benchmarks/bench_victim_accuracy.py --summarize       # write the Markdown file
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py (scripts run from this folder's path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

DATASET = "folder:" + str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
LOG = REPO / "benchmarks" / "results" / "fast-resnet.jsonl"
OUT = REPO / "benchmarks" / "results" / "fast-resnet.md"

# (label, model, model options, epochs, seeds): the points of each plan, run in order.
PLANS = {
    "12k": [("fast-resnet", "fast-resnet", {}, 16, 3)],
    "12k-curve": [
        ("fast-resnet", "fast-resnet", {}, 8, 1),
        ("fast-resnet", "fast-resnet", {}, 4, 1),
        ("small-cnn w16", "small-cnn", {"width": 16}, 15, 3),  # experiments/cifar_breakers' victim
    ],
    "50k": [("fast-resnet w64", "fast-resnet", {"width": 64}, 20, 1)],
}
BATCH = 128


def load_scale(scale: str):
    from ntga.data.load import load_dataset
    from ntga.data.split import make_split

    ds = load_dataset(DATASET)
    if scale == "50k":
        idx = list(range(len(ds.x_train)))
    else:
        idx = make_split(ds, train_size=12000, target_size=2000, seed=0).train_idx
    return ds.x_train[idx], ds.y_train[idx], ds.x_test, ds.y_test


def point_key(scale, label, epochs, seed) -> str:
    return f"{scale}|{label}|{epochs}|{seed}"


def done_keys(log: Path) -> set[str]:
    if not log.exists():
        return set()
    return {point_key(r["scale"], r["label"], r["epochs"], r["seed"])
            for r in map(json.loads, log.read_text().splitlines()) if r.get("kind") == "run"}


def machine() -> dict:
    import jax

    return dict(cpu=cpu_model(), cores=os.cpu_count(), platform=platform.platform(),
                python=platform.python_version(), jax=jax.__version__, backend=jax.default_backend())


def run_plan(plan: str, log: Path) -> None:
    import jax

    from ntga.train import TrainConfig, train_and_evaluate

    scale = plan.split("-")[0]  # "12k-curve" adds points at the 12k scale
    todo = [(label, model, opts, epochs, seed) for label, model, opts, epochs, seeds in PLANS[plan]
            for seed in range(seeds) if point_key(scale, label, epochs, seed) not in done_keys(log)]
    if not todo:
        print(f"{plan}: every point is in {log}")
        return
    x, y, xt, yt = load_scale(scale)
    for label, model, opts, epochs, seed in todo:
        load_before = os.getloadavg()
        config = TrainConfig(epochs=epochs, batch_size=BATCH, eval_every=epochs)
        result = train_and_evaluate(model, x, y, xt, yt, config, jax.random.key(seed), progress=False,
                                    model_kwargs=opts)
        record = dict(kind="run", scale=scale, label=label, model=model, model_opts=opts, epochs=epochs,
                      seed=seed, batch_size=BATCH, num_train=len(x), test_acc=result.final_test_acc,
                      train_acc=float(result.train_acc_curve[-1]), wall_s=result.wall_time_s,
                      images_per_s=result.images_per_s, load_before=load_before, load_after=os.getloadavg(),
                      date=datetime.datetime.now().isoformat(timespec="seconds"), machine=machine())
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{scale} {label} {epochs} ep seed {seed}: {100 * result.final_test_acc:.2f}% "
              f"in {result.wall_time_s:.0f} s", flush=True)


def throughput(model: str, opts: dict, steps: int) -> float:
    """Training images/s of ``model`` at batch 128 on random CIFAR-shaped data (compiling step excluded)."""
    import jax
    import numpy as np

    from ntga.train import TrainConfig, train_and_evaluate

    rng = np.random.default_rng(0)
    n = BATCH * (steps + 1)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % 10
    # One epoch of steps + 1 batches; images_per_s leaves the compiling step out.
    result = train_and_evaluate(model, x, y, x[:BATCH], y[:BATCH], TrainConfig(epochs=1, batch_size=BATCH),
                                jax.random.key(0), progress=False, model_kwargs=opts)
    return result.images_per_s


def measure_resnet18(steps: int, log: Path) -> None:
    """Median time of ``steps`` ResNet-18 training steps at batch 128 (after the compiling one)."""
    ips = throughput("resnet18", {}, steps)
    record = dict(kind="throughput", model="resnet18", batch_size=BATCH, steps=steps, images_per_s=ips,
                  load_before=None, load_after=os.getloadavg(),
                  date=datetime.datetime.now().isoformat(timespec="seconds"), machine=machine())
    with log.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"resnet18: {ips:.1f} images/s", flush=True)


XLA_FLAG_TRIALS = ["", "--xla_cpu_use_xnnpack=true", "--xla_cpu_experimental_xnn_fusion_type=individual_convolution"]


def measure_xla_flags(steps: int, rounds: int, log: Path) -> None:
    """fast-resnet throughput under each XLA:CPU flag set, each in a fresh process, rounds interleaved."""
    import subprocess

    for r in range(rounds):
        for width in (32, 64):
            for flags in XLA_FLAG_TRIALS:
                code = (f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); "
                        f"import bench_victim_accuracy as b; print(b.throughput('fast-resnet', "
                        f"{{'width': {width}}}, {steps}))")
                out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "XLA_FLAGS": flags},
                                     capture_output=True, text=True, check=True).stdout
                ips = float(out.strip().splitlines()[-1])
                record = dict(kind="xla_flags", model="fast-resnet", width=width, flags=flags, round=r,
                              steps=steps, images_per_s=ips, load_after=os.getloadavg(),
                              date=datetime.datetime.now().isoformat(timespec="seconds"), machine=machine())
                with log.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"fast-resnet width {width} XLA_FLAGS={flags or '-'}: {ips:.0f} images/s", flush=True)


def summarize(log: Path, out: Path) -> str:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    runs = [r for r in records if r["kind"] == "run"]
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r["scale"], r["label"], r["epochs"]), []).append(r)
    lines = [
        "# Clean CIFAR-10 accuracy versus wall time (CPU)", "",
        "Command: `python benchmarks/bench_victim_accuracy.py --plan 12k --plan 50k --plan 12k-curve "
        "--resnet18-steps 3`, then `--summarize`. Raw records, one per run: `fast-resnet.jsonl` beside this "
        "file.", "",
        "Each row is whole training runs of `ntga.train` at batch 128 with each victim's default recipe "
        "(see `ntga/models`), one per seed, each with its own complete learning-rate schedule; test "
        "accuracy on the full 10,000-image test set after the last epoch (with the victim's test-time "
        "augmentation: flip for fast-resnet, none for small-cnn). Wall time = init + compilation + "
        "training + final evaluation, dataset loading excluded; median over seeds. Data: the shared JPEG "
        "stand-in of CIFAR-10 (`../shared/data`), which costs a little accuracy against canonical CIFAR-10.",
        "",
        "| scale | victim | epochs | seeds | test acc (%) mean ± std | per seed | median wall (min) | images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (scale, label, epochs), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        accs = [100 * r["test_acc"] for r in rs]
        std = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        per_seed = ", ".join(f"{a:.2f}" for a in accs)
        wall = statistics.median(r["wall_s"] for r in rs) / 60
        ips = statistics.median(r["images_per_s"] for r in rs)
        lines.append(f"| {scale} | {label} | {epochs} | {len(rs)} | {statistics.mean(accs):.2f}{std} | "
                     f"{per_seed} | {wall:.1f} | {ips:,.0f} |")
    for r in (r for r in records if r["kind"] == "throughput"):
        ips = r["images_per_s"]
        lines += ["", f"**{r['model']} (extrapolated, not trained here):** {ips:.1f} training images/s at batch "
                  f"{r['batch_size']} (median of {r['steps']} timed steps, {r['date']}), so one epoch takes "
                  f"{12000 / ips / 60:.0f} min on the 12k subset and {50000 / ips / 60:.0f} min on 50k; "
                  f"APBench's 200-epoch recipe would take {200 * 50000 / ips / 86400:.0f} days, and even 15 epochs "
                  f"on 12k would take {15 * 12000 / ips / 3600:.1f} h."]
    lines += ["", "## Targets (issue 11)", ""]
    for scale, target_acc, target_min in (("12k", 75.0, 10.0), ("50k", 90.0, 60.0)):
        mine = [(k, rs) for k, rs in groups.items() if k[0] == scale and rs[0]["model"] == "fast-resnet"]
        fits = [(k, rs) for k, rs in mine if statistics.median(r["wall_s"] for r in rs) / 60 <= target_min]
        if not fits:
            lines.append(f"- {scale}: no fast-resnet run within {target_min:g} minutes yet.")
            continue
        (_, label, epochs), rs = max(fits, key=lambda kv: statistics.mean(r["test_acc"] for r in kv[1]))
        acc = statistics.mean(100 * r["test_acc"] for r in rs)
        wall = statistics.median(r["wall_s"] for r in rs) / 60
        per_epoch = statistics.median(r["wall_s"] / r["epochs"] for r in rs) / 60
        verdict = ("**met**" if acc >= target_acc else
                   f"**missed by {target_acc - acc:.2f} points** (at {per_epoch:.2f} min per epoch, "
                   f"{int(target_min // per_epoch)} epochs would fit in {target_min:g} minutes; "
                   "no longer run was measured)")
        lines.append(f"- {scale}: target >= {target_acc:g}% within {target_min:g} min; best fast-resnet run "
                     f"inside the limit: {label}, {epochs} epochs, {acc:.2f}% ({len(rs)} seed"
                     f"{'s' if len(rs) > 1 else ''}) in {wall:.1f} min: {verdict}.")
    trials = [r for r in records if r["kind"] == "xla_flags"]
    if trials:
        lines += ["", "## XLA:CPU flags (fast-resnet training throughput, batch 128)", "",
                  "Each flag set in a fresh process, the sets interleaved over rounds; median images/s "
                  "over the rounds, and the ratio to no flags.", "",
                  "| width | XLA_FLAGS | images/s (median) | vs no flags | rounds |", "|---|---|---|---|---|"]
        for width in sorted({r["width"] for r in trials}):
            base = statistics.median(r["images_per_s"] for r in trials if r["width"] == width and not r["flags"])
            for flags in dict.fromkeys(r["flags"] for r in trials):
                mine = [r["images_per_s"] for r in trials if r["width"] == width and r["flags"] == flags]
                med = statistics.median(mine)
                lines.append(f"| {width} | `{flags or '-'}` | {med:,.0f} | {med / base:.2f}x | {len(mine)} |")
    hosts = {json.dumps(r["machine"], sort_keys=True) for r in records}
    lines += ["", "Machine(s): " + "; ".join(
        f"{m['cpu']}, {m['cores']} CPUs, {m['platform']}, Python {m['python']}, jax {m['jax']} ({m['backend']})"
        for m in map(json.loads, sorted(hosts)))]
    loads = [r["load_before"][0] for r in runs if r.get("load_before")]
    if loads:
        lines.append(f"1-minute load average before each run: {min(loads):.2f} to {max(loads):.2f} "
                     "(2 cores: about 2 means the run had the machine to itself).")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", choices=sorted(PLANS), action="append", default=[], help="points to run (repeatable)")
    p.add_argument("--resnet18-steps", type=int, default=0, help="time this many ResNet-18 steps (0: skip)")
    p.add_argument("--xla-flags-rounds", type=int, default=0,
                   help="rounds of fast-resnet throughput under each XLA flag set (0: skip)")
    p.add_argument("--summarize", action="store_true", help=f"write {OUT.relative_to(REPO)} from the log")
    p.add_argument("--log", type=Path, default=LOG)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    for plan in args.plan:
        run_plan(plan, args.log)
    if args.resnet18_steps:
        measure_resnet18(args.resnet18_steps, args.log)
    if args.xla_flags_rounds:
        measure_xla_flags(10, args.xla_flags_rounds, args.log)
    if args.summarize:
        print(summarize(args.log, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
