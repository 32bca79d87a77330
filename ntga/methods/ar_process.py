"""Autoregressive (AR) noise processes behind ``--method ar`` (see :mod:`ntga.methods.shortcuts`).

Paper: P. Sandoval-Segura, V. Singla, J. Geiping, M. Goldblum, T. Goldstein,
D. W. Jacobs, "Autoregressive Perturbations for Data Poisoning", NeurIPS 2022
(Sec. 3; Appendix A.3 for how the processes are chosen).

A process with window ``k`` gives every channel ``c`` its own ``k x k``
coefficient array ``b[c]`` whose bottom-right entry (the pixel being made) is 0.
Starting from Gaussian noise and scanning in raster order, every pixel with row
and column >= k - 1 becomes

    s[c, i, j] = sum_{u, v < k} b[c, u, v] * s[c, i - k + 1 + u, j - k + 1 + v],

a fixed linear combination of the already generated pixels of the ``k x k``
window that ends at it. The residual filter ``f = b`` with ``f[c, k-1, k-1] = -1``
therefore maps every sample of its own process to exactly zero (away from the
random start border) and samples of other processes to something large: the
shortcut a network learns from the class's noise.

Coefficients are drawn from N(0, 1) and each channel's array is normalised to
sum to 1 (paper). Many such draws are unstable (the scan blows up), so, as in
the paper's search, a process is kept only if three samples stay small (RMS <=
:data:`MAX_RMS`) and the residual filters of every process kept so far respond
strongly to its sample (>= ``min_response``, see :func:`response`).

Deviations from the paper's search: (1) stability is checked per channel (the
channels of a process are independent scans), which is slightly stricter than
the paper's bound on all channels together but lets channels be drawn one at a
time -- a random 3-channel draw is stable only ~1% of the time, a channel ~22%;
(2) the default threshold :data:`DEFAULT_MIN_RESPONSE` is 0.1 of our units
(about 2.8 of the paper's), not the 10 its CIFAR-10 search asked for: responses
vary a lot between samples, the released CIFAR-10 processes themselves reach
only ~3 on fresh samples, and a greedy search at 10 does not find 10 processes
among hundreds of stable candidates (the paper used 3 for CIFAR-100).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ntga.errors import UserInputError

# The paper's search rejects a process whose unscaled 3x32x32 sample (from a
# unit Gaussian start) has L2 norm above 50, i.e. RMS above 50 / sqrt(3072).
MAX_RMS = 50.0 / math.sqrt(3 * 32 * 32)
# The paper's search wants the lowest response of an earlier process's filter,
# sum over the 30x30 valid positions of relu(channel-summed residual) of a
# sample scaled to L2 norm 1 on 3x32x32, to be >= 10 (CIFAR-10). In the
# size-free units of `response` that is 10 * sqrt(3072) / (900 * sqrt(3)).
PAPER_MIN_RESPONSE = 10.0 * math.sqrt(3 * 32 * 32) / (30 * 30 * math.sqrt(3))
DEFAULT_MIN_RESPONSE = 0.1
_TRIALS = 3  # samples per candidate in the stability check (paper)
_DRAWS = 256  # channel processes drawn per jitted screening call
_MAX_ROUNDS = 100


def random_coefficients(key: jax.Array, num: int, channels: int, window: int) -> jax.Array:
    """``num`` random processes: N(0, 1) coefficients, own pixel 0, each channel summing to 1.

    Returns:
      float32 [num, C, k, k].
    """
    b = jax.random.normal(key, (num, channels, window, window), jnp.float32)
    b = b.at[:, :, -1, -1].set(0.0)
    return b / jnp.sum(b, axis=(2, 3), keepdims=True)


def generate(coeffs: jax.Array, start: jax.Array) -> jax.Array:
    """Runs each image's process over its start noise in raster order.

    The rows above contribute to a whole row at once (vectorised); only the
    left neighbours within the row make the scan sequential, so it is a scan
    over rows around a scan over columns, vectorised over images and channels.

    Args:
      coeffs: [n, C, k, k] each image's process (bottom-right entries ignored).
      start: [n, C, Hs, Ws] start noise; its first k-1 rows and columns are kept.

    Returns:
      [n, C, Hs, Ws] samples.
    """
    k = coeffs.shape[-1]
    width = start.shape[-1] - k + 1
    above = coeffs[:, :, :k - 1, :]  # [n, C, k-1, k]: weights of the k-1 rows above
    left = coeffs[:, :, k - 1, :k - 1]  # [n, C, k-1]: weights of the k-1 pixels to the left

    def row_step(prev_rows, start_row):  # prev_rows [n, C, k-1, Ws], start_row [n, C, Ws]
        base = sum(above[:, :, u, v, None] * prev_rows[:, :, u, v:v + width] for u in range(k - 1) for v in range(k))

        def pixel_step(last, base_t):  # last [n, C, k-1], base_t [n, C]
            new = base_t + jnp.sum(left * last, axis=-1)
            return jnp.concatenate([last[..., 1:], new[..., None]], axis=-1), new

        _, pixels = lax.scan(pixel_step, start_row[..., :k - 1], jnp.moveaxis(base, -1, 0))
        row = jnp.concatenate([start_row[..., :k - 1], jnp.moveaxis(pixels, 0, -1)], axis=-1)
        return jnp.concatenate([prev_rows[:, :, 1:], row[:, :, None]], axis=2), row

    _, rows = lax.scan(row_step, start[:, :, :k - 1], jnp.moveaxis(start[:, :, k - 1:], 2, 0))
    return jnp.concatenate([start[:, :, :k - 1], jnp.moveaxis(rows, 0, 2)], axis=2)


def residual(coeffs: jax.Array, signal: jax.Array) -> jax.Array:
    """Prediction residual of ``signal`` under the processes ``coeffs`` ("valid" positions only).

    Args:
      coeffs: [n or 1, C, k, k] processes.
      signal: [n, C, H, W] samples.

    Returns:
      [n, C, H - k + 1, W - k + 1]: ``sum_{u,v} f[c,u,v] s[c, i+u, j+v]`` with
      ``f = coeffs`` except ``f[c, k-1, k-1] = -1``; zero on samples of the process itself.
    """
    k = coeffs.shape[-1]
    f = coeffs.at[:, :, -1, -1].set(-1.0)
    h, w = signal.shape[2] - k + 1, signal.shape[3] - k + 1
    return sum(f[:, :, u, v, None, None] * signal[:, :, u:u + h, v:v + w] for u in range(k) for v in range(k))


def response(coeffs: jax.Array, signal: jax.Array) -> jax.Array:
    """The paper's response of residual filters to samples, in size-free units.

    Mean over positions of relu(channel-summed residual), for samples scaled to
    RMS 1 and divided by sqrt(C); the paper's sum over positions on samples of
    L2 norm 1 is this times ``positions * sqrt(C) / sqrt(C * H * W)``.

    Args:
      coeffs: [n or 1, C, k, k]; signal: [n, C, H, W].

    Returns:
      [n].
    """
    rms = jnp.sqrt(jnp.mean(signal * signal, axis=(1, 2, 3), keepdims=True))
    r = jnp.sum(residual(coeffs, signal / jnp.maximum(rms, 1e-30)), axis=1)
    return jnp.mean(jax.nn.relu(r), axis=(1, 2)) / math.sqrt(signal.shape[1])


@partial(jax.jit, static_argnames=("size", "crop"))
def _channel_trials(key, arrays, size, crop):
    """Samples of single-channel processes ``arrays`` [M, k, k].

    Returns:
      rms [M, trials] of the unscaled cropped samples, and the last trial's samples [M, H, W].
    """
    m = arrays.shape[0]
    start = jax.random.normal(key, (_TRIALS * m, 1, size[0] + crop, size[1] + crop), jnp.float32)
    # Trials stacked along the batch axis: one scan for all of them (row t * M + i is trial t of array i).
    samples = generate(jnp.tile(arrays[:, None], (_TRIALS, 1, 1, 1)), start)[:, 0, crop:, crop:]
    samples = samples.reshape(_TRIALS, m, size[0], size[1])
    return jnp.sqrt(jnp.mean(samples * samples, axis=(2, 3))).T, samples[-1]


@jax.jit
def _responses(filters, signals):
    """[F, P]: :func:`response` of every process in ``filters`` [F, C, k, k] to every sample [P, C, H, W]."""
    return jax.vmap(lambda b: response(b[None], signals))(filters)


def find_processes(key: jax.Array, num: int, channels: int, window: int, size: tuple[int, int], crop: int,
                   min_response: float) -> tuple[np.ndarray, dict]:
    """Greedy search for ``num`` stable, mutually distinguishable processes (paper, App. A.3).

    Channel processes are drawn in fixed-size batches and kept when three
    samples stay finite with RMS <= MAX_RMS; consecutive stable channels form a
    C-channel candidate (its sample is the stack of the channels' samples: the
    channels of a process never interact). Candidates are taken in draw order
    when every process kept before responds to their sample with >= ``min_response``.

    Args:
      key: PRNG key.
      num: processes wanted (one per class).
      channels, window: C and k.
      size: (H, W) of the cropped samples the processes will make.
      crop: rows/columns dropped from the top-left of each sample.
      min_response: acceptance threshold in :func:`response` units.

    Returns:
      float32 [num, C, k, k] coefficients, and a JSON-able summary of the search.

    Raises:
      UserInputError: too few candidates passed (the message says which option to relax).
    """
    slots = _DRAWS // channels + 1  # most candidates one batch of draws can complete
    kept = np.zeros((num, channels, window, window), np.float32)
    pool_b = np.zeros((0, window, window), np.float32)
    pool_s = np.zeros((0, *size), np.float32)
    count, tried, lowest = 0, 0, math.inf
    for round_ in range(_MAX_ROUNDS):
        k_draw, k_start = jax.random.split(jax.random.fold_in(key, round_))
        arrays = random_coefficients(k_draw, _DRAWS, 1, window)[:, 0]
        rms, last = (np.asarray(a) for a in _channel_trials(k_start, arrays, size, crop))
        stable = np.all(np.isfinite(rms) & (rms <= MAX_RMS), axis=1)
        pool_b = np.concatenate([pool_b, np.asarray(arrays)[stable]])
        pool_s = np.concatenate([pool_s, last[stable]])
        n = len(pool_b) // channels
        if n == 0:
            continue
        cand = np.zeros((slots, channels, window, window), np.float32)
        sig = np.zeros((slots, channels, *size), np.float32)
        cand[:n] = pool_b[:n * channels].reshape(n, channels, window, window)
        sig[:n] = pool_s[:n * channels].reshape(n, channels, *size)
        pool_b, pool_s = pool_b[n * channels:], pool_s[n * channels:]
        resp = np.asarray(_responses(jnp.asarray(np.concatenate([kept, cand])), jnp.asarray(sig)), np.float64)
        taken: list[int] = []
        for j in range(n):
            tried += 1
            against = np.concatenate([resp[:count, j], resp[num + np.array(taken, int), j]])
            worst = float(against.min()) if against.size else math.inf
            if worst >= min_response:
                taken.append(j)
                lowest = min(lowest, worst)
                if count + len(taken) == num:
                    break
        kept[count:count + len(taken)] = cand[taken]
        count += len(taken)
        if count == num:
            return kept, {"candidates_tried": tried, "lowest_cross_response": None if math.isinf(lowest) else lowest}
    raise UserInputError(
        f"found only {count} of {num} stable, mutually distinct AR processes among {tried} stable candidates; "
        f"lower --method-opt min_response (now {min_response:.4g}) or use a smaller window")


@partial(jax.jit, static_argnames=("size", "crop"))
def sample_batch(key: jax.Array, coeffs: jax.Array, size: tuple[int, int], crop: int) -> jax.Array:
    """One AR sample per row of ``coeffs`` from a fresh unit Gaussian start, cropped.

    Args:
      key: PRNG key of this batch.
      coeffs: [n, C, k, k] each image's process.
      size: (H, W) of the output; the process runs on (H + crop, W + crop).
      crop: leading rows/columns dropped (the paper's 4 removes the random start border).

    Returns:
      float32 [n, H, W, C] unscaled noise.
    """
    n, c = coeffs.shape[:2]
    start = jax.random.normal(key, (n, c, size[0] + crop, size[1] + crop), jnp.float32)
    return jnp.moveaxis(generate(coeffs, start)[:, :, crop:, crop:], 1, -1)
