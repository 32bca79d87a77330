"""``cuda``: convolution-based unlearnable datasets (model-free).

Paper: V. S. Sadasivan, M. Soltanolkotabi, S. Feizi, "CUDA: Convolution-based
Unlearnable Datasets", CVPR 2023.

Algorithm: every class ``c`` gets a random ``k x k`` filter ``s_c`` whose entries
are drawn from ``U(0, blur_parameter)`` and one of whose entries, at a random
position, is set to ``center_parameter`` (1); the same filter blurs every
colour channel. Each training image of class ``y`` is replaced by

    x~ = (x * s_y) / max(x * s_y)

where ``*`` is a 2-D convolution with zero "same" padding and the maximum is
taken per image over all pixels *and channels* (the released code divides the
whole C x H x W tensor by its max, so colour balance is kept). The network
then learns the filter-label shortcut instead of the content.

Defaults (paper, Sec. 4, and its released code): k = 3, blur_parameter = 0.3,
center_parameter = 1. No L-p budget: the change is unbounded by design
(``budget_norm=None``).

The filters come from a private key. ``private_key`` is a passphrase; the
filters are derived from a salted PBKDF2-HMAC-SHA256 digest of it with a
version-independent hash expansion (SHAKE-256), so the same passphrase
reproduces the same filters -- and the same dataset -- on any machine and any
numpy/jax version, and a different passphrase gives different filters. The
passphrase itself is never stored: on construction the config replaces it
with a *differently* salted digest (``private_key_sha256``), which is what the
manifest records; that digest identifies the key but does not give the
filters. Like any password hash it only protects a passphrase that cannot be
guessed (candidates can be tried against it), so use a long random one, and
prefer ``private_key_env=VAR`` (the passphrase read from an environment
variable) to keep it off the command line and out of shell history. Without a
passphrase the filters derive from the run's ``--seed``.

Deviations from the paper's code: (1) pixels are *rounded* to uint8 (the
code truncates with ``astype(uint8)``, up to one grey level lower); (2) an
all-black image (max 0) stays black instead of becoming NaN; (3) the filters
come from the hash expansion above instead of ``np.random.seed(seed)``, so
the reference's exact filters are not reproduced (the distribution is the
same); (4) kernels of any size get "same" padding ((k-1)//2 before, k//2
after), where the code hard-codes padding 1 (right for its k = 3). The
paper's ``grayscale`` option (average the channels after filtering) is not
offered; the ``mix`` option is ``--fraction``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ntga.errors import UserInputError
from ntga.methods.base import MethodSpec, Protected, ProtectTask
from ntga.pixels import to_float, to_uint8

# Domain strings keep the recorded digest and the filter secret unrelated and
# make precomputed tables of plain sha256(passphrase) useless.
_RECORD_SALT = b"ntga.methods.cuda/private-key-record/v1"
_FILTER_SALT = b"ntga.methods.cuda/filter-secret/v1"
_SEED_SALT = b"ntga.methods.cuda/filter-secret-from-seed/v1"
# PBKDF2 rounds: slows guessing a weak passphrase from the recorded digest (~50 ms per derivation).
_KDF_ROUNDS = 100_000
RECORD_PREFIX = "pbkdf2-sha256:"
_BATCH = 512  # images per jitted filtering call (fixed, the last batch is padded)


def _kdf(passphrase: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", passphrase.encode("utf-8"), salt, _KDF_ROUNDS)


def private_key_record(passphrase: str) -> str:
    """The digest of ``passphrase`` that manifests record (identifies the key; cannot rebuild the filters)."""
    return RECORD_PREFIX + _kdf(passphrase, _RECORD_SALT).hex()


@dataclass(frozen=True)
class CudaConfig:
    """Settings of ``cuda``.

    Attributes:
      private_key: a passphrase the class filters derive from (None: from --seed). It is replaced
        on construction by its salted digest (``pbkdf2-sha256:...``), so it never reaches a manifest.
      private_key_env: name of an environment variable holding the passphrase instead (keeps it
        off the command line); only the digest is recorded.
      kernel_size: filter size k (paper 3).
      blur_parameter: filter entries are U(0, blur_parameter) (paper 0.3; larger blurs more).
      center_parameter: the value of the one random entry per filter (paper 1).
    """

    private_key: str | None = None
    private_key_env: str | None = None
    kernel_size: int = 3
    blur_parameter: float = 0.3
    center_parameter: float = 1.0

    def __post_init__(self):
        if not isinstance(self.kernel_size, (int, np.integer)) or not 1 <= self.kernel_size <= 15:
            raise UserInputError(f"kernel_size must be an integer in [1, 15], got {self.kernel_size!r}")
        if not 0.0 < float(self.blur_parameter) <= 10.0:
            raise UserInputError(f"blur_parameter must be in (0, 10], got {self.blur_parameter}")
        if not 0.0 < float(self.center_parameter) <= 10.0:
            raise UserInputError(f"center_parameter must be in (0, 10], got {self.center_parameter}")
        # The 32-byte filter secret is a plain attribute, not a field, so that
        # dataclasses.asdict (the manifest), repr and == never see it.
        object.__setattr__(self, "_secret", None)
        if self.private_key_env is not None:
            if self.private_key is not None:
                raise UserInputError("give either private_key or private_key_env, not both")
            passphrase = os.environ.get(self.private_key_env)
            if not passphrase:
                raise UserInputError(f"private_key_env={self.private_key_env}: that environment variable is "
                                     "unset or empty; export the passphrase in it first")
            object.__setattr__(self, "private_key", passphrase)
            object.__setattr__(self, "private_key_env", None)  # the run is defined by the key, not the variable
        key = self.private_key
        if key is None or key.startswith(RECORD_PREFIX):
            return  # from --seed, or an already-redacted config (e.g. read back from a manifest)
        if not key:
            raise UserInputError("private_key must be a non-empty passphrase (or none to derive from --seed)")
        object.__setattr__(self, "_secret", _kdf(key, _FILTER_SALT))
        object.__setattr__(self, "private_key", private_key_record(key))


def _uniforms(stream: bytes, count: int) -> np.ndarray:
    """``count`` floats in [0, 1) from a byte stream (53 bits each, like numpy's doubles)."""
    words = np.frombuffer(stream[:8 * count], dtype="<u8")
    return (words >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def make_filters(secret: bytes, num_classes: int, kernel_size: int, blur_parameter: float,
                 center_parameter: float) -> np.ndarray:
    """The per-class filters derived from a 32-byte secret.

    Class ``c``'s filter comes from its own SHAKE-256 stream, so it does not
    depend on the number of classes. Returns float64 [K, k, k]: entries
    ``U(0, blur_parameter)``, one entry (uniform position) set to ``center_parameter``.
    """
    k2 = kernel_size * kernel_size
    filters = np.empty((num_classes, k2))
    for c in range(num_classes):
        stream = hashlib.shake_256(secret + b"/class/" + c.to_bytes(4, "little")).digest(8 * (k2 + 1))
        u = _uniforms(stream, k2 + 1)
        filters[c] = blur_parameter * u[:k2]
        filters[c, min(int(u[k2] * k2), k2 - 1)] = center_parameter
    return filters.reshape(num_classes, kernel_size, kernel_size)


def _secret_of(config: CudaConfig, key: jax.Array) -> tuple[bytes, dict]:
    """The filter secret and what the manifest may record about the key."""
    if config.private_key is None:
        data = np.asarray(jax.random.key_data(key)).astype("<u4").tobytes()
        return hashlib.sha256(_SEED_SALT + data).digest(), {"key_source": "seed"}
    if config._secret is None:
        raise UserInputError("this cuda config holds only the digest of its private key "
                             f"({config.private_key[:24]}...); pass the passphrase itself to regenerate the filters")
    return config._secret, {"key_source": "passphrase", "private_key_sha256": config.private_key}


@jax.jit
def _filter_batch(x_uint8: jax.Array, filters: jax.Array) -> jax.Array:
    """x~ = (x * s) / max(x * s) per image, rounded to uint8.

    Args:
      x_uint8: [B, H, W, C] images.
      filters: [B, k, k] float32, each image's class filter (same for every channel).
    """
    k = filters.shape[-1]
    h, w = x_uint8.shape[1:3]
    x = to_float(x_uint8, jnp.float32)
    padded = jnp.pad(x, ((0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2), (0, 0)))
    out = jnp.zeros_like(x)
    # Cross-correlation (what torch's Conv2d computes) as a sum of k*k shifted
    # copies: a per-image filter is then plain broadcasting, no grouped conv.
    for i in range(k):
        for j in range(k):
            out = out + filters[:, i, j][:, None, None, None] * padded[:, i:i + h, j:j + w, :]
    peak = jnp.max(out, axis=(1, 2, 3), keepdims=True)
    # An all-black image has peak 0: leave it black rather than divide by zero.
    return to_uint8(jnp.where(peak > 0, out / jnp.where(peak > 0, peak, 1.0), 0.0))


def protect_cuda(task: ProtectTask, config: CudaConfig, key: jax.Array) -> Protected:
    """Convolves every image with its class's private filter and renormalises it to peak 1."""
    n, h, w, _ = task.x.shape
    if config.kernel_size > min(h, w):
        raise UserInputError(f"kernel_size {config.kernel_size} exceeds the {h}x{w} images")
    secret, record = _secret_of(config, key)
    filters = make_filters(secret, task.num_classes, config.kernel_size, float(config.blur_parameter),
                           float(config.center_parameter)).astype(np.float32)
    out = np.empty_like(task.x)
    pad = (-n) % _BATCH
    x = np.concatenate([task.x, np.zeros((pad, *task.x.shape[1:]), np.uint8)])
    per_image = filters[np.concatenate([task.y, np.zeros(pad, np.int64)])]
    for start in range(0, n, _BATCH):
        stop = min(start + _BATCH, n)
        part = _filter_batch(jnp.asarray(x[start:start + _BATCH]), jnp.asarray(per_image[start:start + _BATCH]))
        out[start:stop] = np.asarray(part)[:stop - start]
    info = {**record, "filters_sha256": hashlib.sha256(filters.tobytes()).hexdigest()}
    return Protected(x=out, y=task.y.copy(), info=info)


SPECS = {
    "cuda": MethodSpec(
        name="cuda", summary="class-wise private random blur filters, renormalised (Sadasivan et al., CVPR 2023)",
        config_type=CudaConfig, protect=protect_cuda, resolve=None, budget_norm=None),
}
