"""Where one chunk of the cnn attack step spends its time (float32, CIFAR-10 shapes).

Usage (from the repo root; pause other work on the machine first)::

    python benchmarks/profile_cnn_chunk.py [TARGETS_PER_CHUNK]   # default 64

Times (median of 5 calls after a warm-up, each jitted alone) K(targets, block)
for a block of 512 random 32x32x3 images and its VJP w.r.t. the block, then the
same without the block's window features (what depends on the block only), then
the kernel's stages one by one. Figures are recorded in
benchmarks/results/attack-cnn-f32.md.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ntga.kernels import layers, make
from ntga.kernels.surrogates import cnn_architecture


def median_time(f, *args, reps: int = 5) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(n_targets: int = 64, n_block: int = 512) -> None:
    rng = np.random.default_rng(0)
    xb = jnp.asarray(rng.random((n_block, 32, 32, 3), np.float32))
    xt = jnp.asarray(rng.random((n_targets, 32, 32, 3), np.float32))
    g = jnp.asarray(rng.standard_normal((n_targets, n_block)), jnp.float32)
    kernel, arch = make("cnn"), cnn_architecture()
    cfg = arch.config
    fb, ft = arch.features(xb), arch.features(xt)

    full = jax.jit(lambda x: jax.vjp(lambda z: kernel(xt, z, get="ntk"), x)[1](g)[0])
    pair = jax.jit(lambda f: jax.vjp(lambda z: arch.pair(ft, z, ("ntk",))[0], f)[1](g)[0])
    print(f"chunk of {n_targets} vs block of {n_block}: whole chunk fwd+vjp {median_time(full, xb):.3f} s, "
          f"without the block's features {median_time(pair, fb):.3f} s")

    w, b = cfg.W_std, cfg.b_std
    products = jax.jit(lambda p1, p2: layers.conv_input(p1, p2).nngp)
    s0 = jax.jit(lambda p1, p2: layers.affine(layers.conv_input(p1, p2), w, b))(ft, fb)
    relu1 = jax.jit(lambda s: jax.vjp(layers.relu, s)[1](s)[0])
    s1 = jax.jit(layers.relu)(s0)

    def conv(s):
        return layers.conv(s, w, b, cfg.filter_size, cfg.stride, cfg.padding)

    s2 = jax.jit(conv)(s1)
    conv2 = jax.jit(lambda s: jax.vjp(conv, s)[1](s2)[0])
    s3 = jax.jit(layers.relu)(s2)
    relu2 = jax.jit(lambda s: jax.vjp(layers.relu, s)[1](s3)[0])
    print(f"window products (fwd) {median_time(products, ft, fb):.3f} s; first ReLU fwd+vjp "
          f"{median_time(relu1, s0):.3f} s; second conv fwd+vjp {median_time(conv2, s1):.3f} s; "
          f"second ReLU fwd+vjp {median_time(relu2, s2):.3f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 64)
