"""ntga.attack: PGD on the NTK-GP target loss for one block (8 images 6x6x1, 12 targets, 3 classes)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntga import kernels
from ntga.attack import (
    AttackConfig,
    evaluate_block,
    make_block_attack,
    make_pgd_step,
    one_hot,
    poison_block,
    reference_fgsm_config,
    target_loss,
    target_loss_and_grad,
)
from ntga.errors import UserInputError
from ntga.gp import gp_mean
from ntga.pixels import to_float, uint8_linf_cap

FNN = kernels.make("fnn")
# Tests share configs where they can: the jitted attack is cached per (kernel_fn, config).
SHARED_CONFIG = AttackConfig(eps=0.1, steps=4, t=64.0, target_chunk=5)


def rbf_kernel(x1, x2, get="ntk"):
    """A plain differentiable kernel (not from ntga.kernels): the attack only needs the contract."""
    a, b = x1.reshape(x1.shape[0], -1), x2.reshape(x2.shape[0], -1)
    sq = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
    return jnp.exp(-sq / a.shape[1]) + 0.1


@pytest.fixture
def problem():
    """8 block images and 12 targets on the uint8 grid, float64, 3 classes."""
    rng = np.random.default_rng(0)
    x_block = rng.integers(0, 256, size=(8, 6, 6, 1)).astype(np.float64) / 255
    x_target = rng.integers(0, 256, size=(12, 6, 6, 1)).astype(np.float64) / 255
    y_block = one_hot(np.arange(8) % 3, 3, np.float64)
    y_target = one_hot(rng.integers(0, 3, 12), 3, np.float64)
    return x_block, y_block, x_target, y_target


def l2_per_image(d):
    return np.sqrt(np.sum(np.asarray(d, np.float64) ** 2, axis=(1, 2, 3)))


def assert_uint8_within_budget(x_poison, x_block, eps, norm):
    assert x_poison.dtype == np.uint8 and x_poison.shape == x_block.shape
    base = np.round(x_block * 255).astype(np.int64)
    delta = x_poison.astype(np.int64) - base
    if norm == "linf":
        assert np.max(np.abs(delta)) <= uint8_linf_cap(eps)
        assert np.max(np.abs(delta)) / 255 <= eps
    else:
        assert np.all(l2_per_image(delta / 255) <= eps)


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
@pytest.mark.slow
def test_poison_block_budget_shapes_and_loss_increase(problem, norm, eps):
    x_block, y_block, x_target, y_target = problem
    config = dataclasses.replace(SHARED_CONFIG, eps=eps, norm=norm, step_size=None)
    result = poison_block(FNN, x_block, y_block, x_target, y_target, config)
    assert_uint8_within_budget(result.x_poison_uint8, x_block, eps, norm)
    assert np.any(result.x_poison_uint8 != np.round(x_block * 255))
    assert result.loss_history.shape == (5,)
    assert np.all(np.isfinite(result.loss_history))
    # The attack's health check: PGD ascends the target loss (even after uint8 rounding).
    assert result.loss_history[-1] > result.loss_history[0]
    assert 0.0 <= result.poisoned_target_acc <= 1.0 and 0.0 <= result.clean_target_acc <= 1.0
    clean_loss, clean_acc = evaluate_block(FNN, config, x_block, y_block, x_target, y_target)
    assert result.clean_target_acc == pytest.approx(float(clean_acc))
    assert result.loss_history[0] == pytest.approx(float(clean_loss), rel=1e-12)
    poisoned = to_float(result.x_poison_uint8, np.float64)
    p_loss, p_acc = evaluate_block(FNN, config, poisoned, y_block, x_target, y_target)
    assert result.loss_history[-1] == pytest.approx(float(p_loss), rel=1e-10)
    assert result.poisoned_target_acc == pytest.approx(float(p_acc))


@pytest.mark.slow
def test_fgsm_preset_equals_one_signed_step_by_hand(problem):
    x_block, y_block, x_target, y_target = problem
    eps = 20 / 255  # a whole number of uint8 levels, so rounding is exact
    config = reference_fgsm_config(eps, 64.0, target_chunk=5)
    assert (config.steps, config.step_size) == (1, eps)
    grad = jax.jit(jax.grad(lambda x: target_loss(FNN, config, x, y_block, x_target, y_target)))(x_block)
    base = np.round(x_block * 255).astype(np.int64)
    want = np.clip(base + 20 * np.sign(np.asarray(grad)).astype(np.int64), 0, 255).astype(np.uint8)
    result = poison_block(FNN, x_block, y_block, x_target, y_target, config)
    np.testing.assert_array_equal(result.x_poison_uint8, want)
    # The jitted step gives the same float iterate.
    x1, loss0 = make_pgd_step(FNN, config)(jnp.asarray(x_block), x_block, y_block, x_target, y_target,
                                           jnp.ones(12))
    np.testing.assert_allclose(np.asarray(x1) * 255, want, atol=1e-9)
    assert float(loss0) == pytest.approx(result.loss_history[0], rel=1e-12)


@pytest.mark.slow
def test_random_start_is_deterministic_under_a_key(problem):
    x_block, y_block, x_target, y_target = problem
    config = AttackConfig(eps=0.1, steps=2, random_start=True, target_chunk=12)
    a = poison_block(FNN, x_block, y_block, x_target, y_target, config, key=jax.random.key(1))
    b = poison_block(FNN, x_block, y_block, x_target, y_target, config, key=jax.random.key(1))
    c = poison_block(FNN, x_block, y_block, x_target, y_target, config, key=jax.random.key(2))
    np.testing.assert_array_equal(a.x_poison_uint8, b.x_poison_uint8)
    np.testing.assert_array_equal(a.loss_history, b.loss_history)
    assert np.any(a.x_poison_uint8 != c.x_poison_uint8)
    assert_uint8_within_budget(c.x_poison_uint8, x_block, 0.1, "linf")
    with pytest.raises(UserInputError, match="key"):
        poison_block(FNN, x_block, y_block, x_target, y_target, config)


@pytest.mark.slow
def test_block_attack_vmaps_over_blocks(problem):
    """What ntga.run.spread does: vmap the pure attack over blocks; each equals its own run."""
    x_block, y_block, x_target, y_target = problem
    config = SHARED_CONFIG
    xs = np.stack([x_block, x_block[::-1]])
    ys = np.stack([y_block, y_block[::-1]])
    keys = jax.random.split(jax.random.key(0), 2)
    out = jax.jit(jax.vmap(make_block_attack(FNN, config), in_axes=(0, 0, None, None, 0)))(
        xs, ys, x_target, y_target, keys)
    for i in range(2):
        single = poison_block(FNN, xs[i], ys[i], x_target, y_target, config)
        np.testing.assert_array_equal(np.asarray(out["x_poison_uint8"][i]), single.x_poison_uint8)
        np.testing.assert_allclose(np.asarray(out["loss_history"][i]), single.loss_history, rtol=1e-10)


# --------------------------------------------------------------------------- gradient and step


@pytest.mark.parametrize("kernel_fn", [FNN, rbf_kernel], ids=["fnn", "rbf"])
@pytest.mark.parametrize("chunk", [1, 5, 100])
@pytest.mark.slow
def test_chunked_gradient_equals_unchunked(problem, kernel_fn, chunk):
    x_block, y_block, x_target, y_target = problem
    config = AttackConfig(eps=0.1, target_chunk=chunk)
    weights = jnp.asarray(np.linspace(0.0, 2.0, 12))
    x = jnp.asarray(x_block)
    loss, grad = jax.jit(lambda x: target_loss_and_grad(kernel_fn, config, x, y_block, x_target, y_target,
                                                        weights))(x)
    want_loss, want_grad = jax.jit(jax.value_and_grad(
        lambda x: target_loss(kernel_fn, config, x, y_block, x_target, y_target, weights)))(x)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-8, atol=1e-12 * float(jnp.max(jnp.abs(want_grad))))


@pytest.mark.slow
def test_jit_matches_eager(problem):
    # The rbf kernel keeps the eager run (one compile per primitive) short; the step's own
    # machinery (custom VJP, scan over chunks, projection) is the same for any kernel.
    x_block, y_block, x_target, y_target = problem
    config = AttackConfig(eps=0.1, norm="l2", steps=3, target_chunk=6)
    step = make_pgd_step(rbf_kernel, config)
    args = (jnp.asarray(x_block), x_block, y_block, x_target, y_target, jnp.ones(12))
    x_jit, loss_jit = step(*args)
    with jax.disable_jit():
        x_eager, loss_eager = step(*args)
    np.testing.assert_allclose(x_jit, x_eager, rtol=1e-10, atol=1e-13)
    assert float(loss_jit) == pytest.approx(float(loss_eager), rel=1e-10)


@pytest.mark.slow
def test_l2_step_moves_each_image_by_step_size(problem):
    x_block, y_block, x_target, y_target = problem
    x_mid = 0.25 + 0.5 * x_block  # away from 0 and 1, so clipping is inactive
    config = AttackConfig(eps=1.0, norm="l2", steps=1, step_size=0.05, target_chunk=12)
    x1, _ = make_pgd_step(FNN, config)(jnp.asarray(x_mid), x_mid, y_block, x_target, y_target, jnp.ones(12))
    np.testing.assert_allclose(l2_per_image(np.asarray(x1) - x_mid), 0.05, rtol=1e-10)


@pytest.mark.slow
def test_zero_weight_padding_changes_nothing(problem):
    x_block, y_block, x_target, y_target = problem
    config = SHARED_CONFIG
    loss, acc = evaluate_block(FNN, config, x_block, y_block, x_target, y_target)
    pad_x = np.concatenate([x_target, np.zeros((3, 6, 6, 1))])
    pad_y = np.concatenate([y_target, np.eye(3)])
    weights = np.concatenate([np.ones(12), np.zeros(3)])
    loss_p, acc_p = evaluate_block(FNN, config, x_block, y_block, pad_x, pad_y, weights)
    assert float(loss_p) == pytest.approx(float(loss), rel=1e-12)
    assert float(acc_p) == pytest.approx(float(acc))
    # ... and the definition: GP mean, argmax accuracy, summed cross-entropy.
    f = gp_mean(FNN(x_target, x_block), FNN(x_block, None), y_block, config.t, config.diag_reg)
    assert float(acc) == pytest.approx(np.mean(np.argmax(f, 1) == np.argmax(y_target, 1)))
    assert float(loss) == pytest.approx(-float(np.sum(y_target * jax.nn.log_softmax(f, axis=1))), rel=1e-10)


@pytest.mark.slow
def test_float32_attack_runs_and_stays_in_budget(problem):
    x_block, y_block, x_target, y_target = (a.astype(np.float32) for a in problem)
    config = AttackConfig(eps=8 / 255, steps=3, target_chunk=5)
    result = poison_block(FNN, x_block, y_block, x_target, y_target, config)
    assert_uint8_within_budget(result.x_poison_uint8, x_block.astype(np.float64), 8 / 255, "linf")
    assert np.all(np.isfinite(result.loss_history))
    assert result.loss_history[-1] > result.loss_history[0]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs,name", [
    (dict(eps=0.0), "eps"), (dict(eps=1.5), "eps"), (dict(eps=-1.0, norm="l2"), "eps"),
    (dict(eps=float("nan")), "eps"), (dict(eps=0.1, norm="l1"), "norm"), (dict(eps=0.1, steps=0), "steps"),
    (dict(eps=0.1, steps=2.5), "steps"), (dict(eps=0.1, step_size=0.0), "step_size"),
    (dict(eps=0.1, t=0.0), "t"), (dict(eps=0.1, t=float("inf")), "t"), (dict(eps=0.1, diag_reg=-1.0), "diag_reg"),
    (dict(eps=0.1, target_chunk=0), "target_chunk"), (dict(eps=0.1, random_start=1), "random_start"),
])
def test_config_validation(kwargs, name):
    with pytest.raises(UserInputError, match=f"^{name}="):
        AttackConfig(**kwargs)


def test_config_defaults():
    config = AttackConfig(eps=0.3)
    assert config.step_size == pytest.approx(1.1 * 0.3 / 10)
    assert AttackConfig(eps=2.0, norm="l2").eps == 2.0  # L2 budgets may exceed 1
    assert hash(AttackConfig(eps=0.3, steps=np.int64(10))) == hash(config)


def test_one_hot():
    np.testing.assert_array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(UserInputError, match="labels range"):
        one_hot(np.array([0, 3]), 3)
    with pytest.raises(UserInputError, match="integer"):
        one_hot(np.array([0.5]), 3)


@pytest.mark.parametrize("change,match", [
    (lambda p: (p[0][0], *p[1:]), "x_block has shape"),
    (lambda p: ((p[0] * 255).astype(np.uint8), *p[1:]), "dtype uint8"),
    (lambda p: (p[0] * 2, *p[1:]), r"values in \[0, 2\]"),
    (lambda p: (p[0], p[1][:4], *p[2:]), "y_block has shape"),
    (lambda p: (*p[:2], p[2][:, :4], p[3]), "must match"),
    (lambda p: (*p[:3], p[3][:, :2]), "classes"),
])
def test_poison_block_rejects_bad_inputs(problem, change, match):
    with pytest.raises(UserInputError, match=match):
        poison_block(FNN, *change(problem), AttackConfig(eps=0.1))
