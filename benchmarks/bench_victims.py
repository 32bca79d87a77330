"""Training throughput of every victim, and what makes Flax convolutions faster on CPU.

Part 1 measures images/s of one full training step (gather + augmentation +
standardisation + forward + backward + optax update, i.e. the jitted step of
``defenses.train``) at batch 128, after compilation, as the median of repeated
steps, for every registered victim on its natural input shape (fnn, fnn-relu
and cnn on 28x28x1 and 32x32x3; the others on 32x32x3).

Part 2 tries cheap ways of speeding up convolution training on XLA:CPU and
records what helped: bfloat16 compute, ``jax.default_matmul_precision``,
state donation, im2col + matmul instead of XLA's convolution, XLA:CPU flags
(Eigen threading, XNNPACK, oneDNN, YNNPACK), and NHWC vs NCHW layout for a
single 3x3 convolution layer.

Every measurement runs in a fresh subprocess, so XLA flags and memory never
leak between measurements. Results go to stdout and to
benchmarks/results/victims.md.

    python benchmarks/bench_victims.py [--models a,b] [--repeats N] [--no-experiments] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

BATCH = 128
NATURAL_SHAPES = {
    "fnn": [(28, 28, 1), (32, 32, 3)],
    "fnn-relu": [(28, 28, 1), (32, 32, 3)],
    "cnn": [(28, 28, 1), (32, 32, 3)],
    "resnet18": [(32, 32, 3)],
    "densenet121": [(32, 32, 3)],
    "wrn": [(32, 32, 3)],
    "small-cnn": [(32, 32, 3)],
}
# Steps timed per measurement: the big victims take seconds per step on 2 cores.
REPEATS = {"fnn": 10, "fnn-relu": 10, "cnn": 5, "small-cnn": 5, "resnet18": 3, "wrn": 3, "densenet121": 2}

XLA_FLAG_TRIALS = [
    ("Eigen single-threaded", "--xla_cpu_multi_thread_eigen=false"),
    ("XNNPACK", "--xla_cpu_use_xnnpack=true"),
    ("XNNPACK fusion of convolutions", "--xla_cpu_experimental_xnn_fusion_type=individual_convolution"),
    ("YNNPACK fusion of convolutions", "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"),
    ("oneDNN custom calls", "--xla_cpu_experimental_onednn_custom_call=true"),
]


# ----------------------------------------------------------------------------- worker side


def _im2col_conv():
    """A drop-in for ``flax.linen.Conv`` (stride 1, SAME) computing the convolution as one matmul.

    The image is padded, the kh*kw shifted views are concatenated on the
    channel axis ([B, H, W, kh*kw*C]) and multiplied by the HWIO kernel
    reshaped to [kh*kw*C, features]; the backward pass is then slices, pads
    and two matmuls, all of which XLA:CPU handles well.
    """
    import flax.linen as nn
    import jax.numpy as jnp

    class Im2ColConv(nn.Module):
        features: int
        kernel_size: tuple
        padding: str = "SAME"
        use_bias: bool = False
        dtype: object = jnp.float32

        @nn.compact
        def __call__(self, x):
            kh, kw = self.kernel_size
            b, h, w, c = x.shape
            kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, c, self.features))
            x = x.astype(self.dtype)
            xp = jnp.pad(x, ((0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
            cols = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
            y = cols.reshape(b * h * w, kh * kw * c) @ kernel.reshape(kh * kw * c, self.features).astype(self.dtype)
            return y.reshape(b, h, w, self.features)

    return Im2ColConv


def _pointwise_as_conv():
    """Swaps the victims' matmul 1x1 convolutions back to ``nn.Conv`` (to measure what the matmul buys)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from defenses.models import densenet, layers, resnet

    class PointwiseAsConv(nn.Module):
        features: int
        stride: int = 1
        dtype: object = jnp.float32

        @nn.compact
        def __call__(self, x):
            return layers.Conv(self.features, (1, 1), strides=(self.stride, self.stride), dtype=self.dtype)(x)

    densenet.PointwiseConv = resnet.PointwiseConv = PointwiseAsConv


def measure(task: dict) -> dict:
    """One timing in this process: compile a training step, then time ``repeats`` steps."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from defenses import augment as aug
    from defenses.models import get_model
    from defenses.train import TrainConfig, make_optimizer, make_train_step

    if task["kind"] == "conv-layer":
        return measure_conv_layer(task)
    name, shape = task["model"], tuple(task["shape"])
    spec = get_model(name)
    cfg = TrainConfig(batch_size=BATCH).resolved(spec)
    kwargs = {}
    if task.get("dtype") == "bfloat16":
        kwargs["dtype"] = jnp.bfloat16
    if task.get("im2col"):
        kwargs["conv"] = _im2col_conv()
    if task.get("pointwise_as_conv"):
        _pointwise_as_conv()
    module = spec.build(10, **{**kwargs, **{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in task.get("kwargs", {}).items()}})
    rng = np.random.default_rng(0)
    n = BATCH * 4
    x_all = jnp.asarray(rng.integers(0, 256, (n, *shape), dtype=np.uint8))
    y_all = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    mean, std = (jnp.asarray(a) for a in aug.channel_stats(np.asarray(x_all)))
    tx = make_optimizer(cfg, 1000)
    key = jax.random.key(0)
    init = jax.jit(lambda k: module.init({"params": k, "dropout": k}, jnp.zeros((1, *shape), jnp.float32)),
                   compiler_options={"xla_backend_optimization_level": 0})
    variables = init(key)
    state = dict(params=variables["params"], batch_stats=variables.get("batch_stats", {}),
                 opt_state=tx.init(variables["params"]), step=jnp.zeros((), jnp.int32))
    step = jax.jit(make_train_step(module, spec, cfg, tx, 10, mean, std),
                   donate_argnums=0 if task.get("donate", True) else ())
    precision = task.get("matmul_precision")
    ctx = jax.default_matmul_precision(precision) if precision else _null()
    times = []
    with ctx:
        for i in range(task["repeats"] + 1):
            idx = jnp.arange(BATCH) + (i % 4) * BATCH
            t0 = time.perf_counter()
            state, metrics = step(state, x_all, y_all, idx, key)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - t0)
    med = statistics.median(times[1:])
    return dict(task, compile_s=times[0] - med, step_s=med, steps_s=times[1:], images_per_s=BATCH / med,
                loss=float(metrics[0]) / BATCH)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def measure_conv_layer(task: dict) -> dict:
    """Forward + backward (input and kernel gradients) of one 3x3, 64 -> 64 convolution on [128, 32, 32]."""
    import jax
    import jax.numpy as jnp

    layout, dtype = task["layout"], jnp.dtype(task.get("dtype", "float32"))
    b, h, c = BATCH, 32, 64
    key = jax.random.key(0)
    if layout == "NHWC":
        x, w, dn = jax.random.normal(key, (b, h, h, c), dtype), jax.random.normal(key, (3, 3, c, c), dtype), (
            "NHWC", "HWIO", "NHWC")
    else:
        x, w, dn = jax.random.normal(key, (b, c, h, h), dtype), jax.random.normal(key, (c, c, 3, 3), dtype), (
            "NCHW", "OIHW", "NCHW")

    def loss(w, x):
        y = jax.lax.conv_general_dilated(x, w * 0.05, (1, 1), "SAME", dimension_numbers=dn)
        return jnp.sum(jax.nn.relu(y).astype(jnp.float32))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    times = []
    for _ in range(task["repeats"] + 1):
        t0 = time.perf_counter()
        jax.block_until_ready(grad(w, x))
        times.append(time.perf_counter() - t0)
    med = statistics.median(times[1:])
    flops = 3 * 2 * b * h * h * c * c * 9  # forward + two backward convolutions
    return dict(task, step_s=med, steps_s=times[1:], gflops=flops / med / 1e9)


# ----------------------------------------------------------------------------- driver side


def run_task(task: dict, flags: str = "") -> dict:
    """Runs ``measure(task)`` in a fresh interpreter with XLA_FLAGS=flags."""
    env = dict(os.environ, XLA_FLAGS=flags)
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(task)], env=env, cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(task, flags=flags, error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["flags"] = flags
    return result


def _show(r: dict) -> None:
    print(json.dumps({k: v for k, v in r.items() if k != "steps_s"}), flush=True)


def paired(base: dict, trials: list, alternate: bool = True) -> list:
    """Runs base, trial 1, base, trial 2, base, ... and rates each trial against its neighbouring baselines.

    Other jobs share this machine and its load drifts within minutes, so a
    trial is compared with the mean of the baseline runs just before and
    just after it rather than with one baseline taken at the start.
    """
    rows, before = [], run_task(base)
    before["label"] = "baseline (" + base["model"] + ")"
    rows.append(before)
    _show(before)
    for label, change, flags in trials:
        trial = run_task({**base, **change}, flags)
        trial["label"] = label
        after = run_task(base) if alternate else before
        refs = [b["step_s"] for b in (before, after) if "error" not in b]
        if refs and "error" not in trial:
            trial["ref_step_s"] = sum(refs) / len(refs)
            trial["speedup"] = trial["ref_step_s"] / trial["step_s"]
        rows.append(trial)
        _show(trial)
        if alternate:
            after["label"] = "baseline (" + base["model"] + ")"
            rows.append(after)
            _show(after)
        before = after
    return rows


def run_experiments(repeats: int | None) -> list:
    """Part 2: what makes convolution training faster on XLA:CPU (each row rated against its own baselines)."""
    small = dict(kind="train-step", model="small-cnn", shape=(32, 32, 3), repeats=repeats or 5)
    rows = paired(small, [
        ("bfloat16 compute (float32 params)", dict(dtype="bfloat16"), ""),
        ("jax.default_matmul_precision('bfloat16')", dict(matmul_precision="bfloat16"), ""),
        ("im2col + matmul for the 3x3 convolutions", dict(im2col=True), ""),
        ("no state donation", dict(donate=False), ""),
    ] + [(label, {}, flags) for label, flags in XLA_FLAG_TRIALS])
    # DenseNet-121's first two dense blocks: half of their convolutions are 1x1.
    dense = dict(kind="train-step", model="densenet121", shape=(32, 32, 3), repeats=repeats or 2,
                 kwargs=dict(stages=[6, 12]))
    rows += paired(dense, [("1x1 convolutions as XLA convolutions instead of matmuls",
                            dict(pointwise_as_conv=True), "")], alternate=False)
    resnet = dict(kind="train-step", model="resnet18", shape=(32, 32, 3), repeats=repeats or 2)
    rows += paired(resnet, [("bfloat16 compute (float32 params)", dict(dtype="bfloat16"), "")], alternate=False)
    base_layer = dict(kind="conv-layer", model="one 3x3 conv layer", layout="NHWC", dtype="float32", repeats=5)
    layer_rows = paired(base_layer, [("NCHW layout", dict(layout="NCHW"), ""),
                                     ("bfloat16", dict(dtype="bfloat16"), "")], alternate=False)
    return rows + layer_rows


def _fmt(r: dict, key: str, fmt: str) -> str:
    return "error: " + r["error"][:60] if "error" in r else format(r[key], fmt)


def _shape(s) -> str:
    return "x".join(map(str, s))


def machine_info() -> str:
    import jax
    import flax
    import optax

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, {platform.platform()}; Python {platform.python_version()}, "
            f"jax {jax.__version__} ({jax.default_backend()}), flax {flax.__version__}, optax {optax.__version__}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(NATURAL_SHAPES), help="comma-separated victims")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per measurement (default per model)")
    parser.add_argument("--no-experiments", action="store_true", help="skip part 2 (CPU speed-up trials)")
    parser.add_argument("--no-victims", action="store_true", help="skip part 1 (victim throughput)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "victims.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0

    unknown = set(args.models.split(",")) - set(NATURAL_SHAPES)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; accepted: {', '.join(NATURAL_SHAPES)}")
    started, load_before = time.perf_counter(), os.getloadavg()
    reps = lambda m: args.repeats or REPEATS[m]  # noqa: E731
    victims = []
    for model in [] if args.no_victims else args.models.split(","):
        for shape in NATURAL_SHAPES[model]:
            r = run_task(dict(kind="train-step", model=model, shape=shape, repeats=reps(model)))
            victims.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "steps_s"}), flush=True)

    trials = []
    if not args.no_experiments:
        trials = run_experiments(args.repeats)

    write_report(args.out, victims, trials, load_before, os.getloadavg(), time.perf_counter() - started, argv)
    print(f"wrote {args.out}")
    return 0


def write_report(out: Path, victims, trials, load_before, load_after, seconds, argv) -> None:
    lines = ["# Victim training throughput (CPU)", "",
             f"Command: `python benchmarks/bench_victims.py{' ' + ' '.join(argv) if argv else ''}`  ",
             f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}; total benchmark time {seconds / 60:.1f} min",
             "",
             f"One jitted training step of `defenses.train` (gather, default augmentation, standardisation, "
             f"forward, backward, optax update) at batch {BATCH} on random uint8 images, 10 classes, each "
             f"victim's default recipe; median over the timed steps after the compiling one, each "
             f"measurement in a fresh process.", "",
             "| victim | input | compile (s) | step (s) | images/s | timed steps |", "|---|---|---|---|---|---|"]
    for r in victims:
        lines.append(f"| {r['model']} | {_shape(r['shape'])} | {_fmt(r, 'compile_s', '.1f')} | "
                     f"{_fmt(r, 'step_s', '.3f')} | {_fmt(r, 'images_per_s', ',.0f')} | {r['repeats']} |")
    if trials:
        lines += ["", "## Making convolution training faster on XLA:CPU", "",
                  "Each trial runs between two baseline runs of the same workload (fresh processes) and its "
                  "speed-up is the mean baseline step time over the trial's step time (>1 = faster). "
                  "Workloads: `small-cnn` training step (32x32x3, batch 128); DenseNet-121's first two dense "
                  "blocks (`stages=(6, 12)`), ResNet-18 training steps; one 3x3 64->64 convolution layer "
                  "(forward + both gradients, [128, 32, 32, 64]).", "",
                  "| workload | trial | XLA_FLAGS | step (s) | throughput | speed-up |", "|---|---|---|---|---|---|"]
        for t in trials:
            if "error" in t:
                lines.append(f"| {t.get('model', '')} | {t['label']} | `{t['flags'] or '-'}` | "
                             f"{_fmt(t, '', '')} | | |")
                continue
            thr = f"{t['gflops']:.1f} GFLOP/s" if t["kind"] == "conv-layer" else f"{t['images_per_s']:,.0f} img/s"
            speed = f"**{t['speedup']:.2f}x**" if "speedup" in t else "(baseline)"
            lines.append(f"| {t.get('model', '')} | {t['label']} | `{t['flags'] or '-'}` | {t['step_s']:.3f} | "
                         f"{thr} | {speed} |")
    lines += ["", f"Machine: {machine_info()}.  ",
              f"Load average before/after (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in load_before)} / "
              f"{', '.join(f'{v:.2f}' for v in load_after)}.", "",
              "Note: the 2 cores were shared with other jobs running at the same time (see the load "
              "averages), so absolute numbers are inflated and noisy (±30% between runs here); rerun on a "
              "quiet machine for reference numbers. Ratios measured back to back are more reliable than "
              "absolute images/s.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
