"""Block plan, checkpoints, resume and device spreading, with a cheap stand-in block function.

The NTGA attack itself is tested in test_attack*.py and end to end in
test_generate_cli.py; here the block function is a small deterministic,
key-dependent transform so that the run machinery is tested in isolation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntga.errors import UserInputError
from ntga.run.blocks import BlockJob, BlockRunner
from ntga.run.plan import BlockPlan, parse_shard
from ntga.run.workdir import WorkDir


def noisy_block_fn(x_block, y_block, x_target, y_target, key):
    """Adds key-dependent noise scaled by a target-set statistic; returns uint8 and stats."""
    noise = jax.random.uniform(key, x_block.shape, x_block.dtype, -0.1, 0.1)
    x = jnp.clip(x_block + noise * jnp.mean(x_target), 0.0, 1.0)
    return {
        "x_poison_uint8": jnp.round(x * 255).astype(jnp.uint8),
        "clean_target_acc": jnp.mean(y_target[:, 0]),
        "loss_history": jnp.stack([jnp.sum(x_block), jnp.sum(x)]),
    }


def make_job(n=23, block_size=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 4, 4, 1))
    y = np.eye(3)[rng.integers(0, 3, n)]
    xt = rng.uniform(size=(7, 4, 4, 1))
    yt = np.eye(3)[rng.integers(0, 3, 7)]
    return BlockJob(x, y, block_size, shared=(xt, yt))


FP = {"method": "test", "eps": 0.1}


def run_blocks(job, block_fn, key, out, *, fingerprint, resume=False, shard=(0, 1), devices=None, progress=False,
               describe=None):
    """What the driver does for a block-wise method: open the run's work directory, then run the blocks."""
    work = WorkDir(out)
    work.open(fingerprint, resume=resume)
    runner = BlockRunner(work, resume=resume, shard=shard, devices=devices, progress=progress)
    return runner.run(job, block_fn, key, describe=describe)


def test_plan_keeps_the_remainder():
    plan = BlockPlan(23, 5)
    assert plan.num_blocks == 5
    assert plan.sizes() == [5, 5, 5, 5, 3]
    assert plan.bounds(4) == (20, 23)


def test_plan_rejects_bad_block_sizes():
    with pytest.raises(UserInputError, match="larger than the training set"):
        BlockPlan(10, 11)
    with pytest.raises(UserInputError, match="positive"):
        BlockPlan(10, 0)


@pytest.mark.parametrize("text, expected", [(None, (0, 1)), ("1/1", (0, 1)), ("3/4", (2, 4))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/2", "3/2", "a/b", "2"])
def test_parse_shard_rejects(text):
    with pytest.raises(UserInputError, match="--shard"):
        parse_shard(text)


def test_run_blocks_is_complete_and_deterministic(tmp_path, key):
    job = make_job()
    x1, s1 = run_blocks(job, noisy_block_fn, key, tmp_path / "a", fingerprint=FP, progress=False)
    x2, _ = run_blocks(job, noisy_block_fn, key, tmp_path / "b", fingerprint=FP, progress=False)
    assert x1.shape == (23, 4, 4, 1) and x1.dtype == np.uint8
    np.testing.assert_array_equal(x1, x2)
    assert s1.complete and len(s1.block_stats) == 5
    # Different blocks get different keys.
    d = x1.astype(int) - np.round(job.x * 255).astype(int)
    assert not np.array_equal(d[:5], d[5:10])


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, key):
    job = make_job()
    full, _ = run_blocks(job, noisy_block_fn, key, tmp_path / "full", fingerprint=FP, progress=False)

    calls = []

    def interrupt_after_two(index, stats):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return ""

    with pytest.raises(KeyboardInterrupt):
        run_blocks(job, noisy_block_fn, key, tmp_path / "r", fingerprint=FP, progress=False,
                   describe=interrupt_after_two)
    assert WorkDir(tmp_path / "r").finished(5) == [0, 1]
    # A half-written temp file from the kill must not confuse the resume.
    (tmp_path / "r" / ".work" / ".block_00002.npy.123.tmp").write_bytes(b"garbage")
    resumed, summary = run_blocks(job, noisy_block_fn, key, tmp_path / "r", fingerprint=FP, resume=True,
                                  progress=False)
    np.testing.assert_array_equal(resumed, full)
    assert summary.complete


def test_non_empty_out_that_is_not_ours_is_refused_even_with_resume(tmp_path, key):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "something").write_text("x")
    for resume in (False, True):
        with pytest.raises(UserInputError, match=r"is not empty \(something\) and does not hold an ntga.generate run"):
            run_blocks(make_job(), noisy_block_fn, key, tmp_path / "o", fingerprint=FP, resume=resume,
                       progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["something"]
    assert (tmp_path / "o" / "something").read_text() == "x"


def test_our_unfinished_run_needs_resume(tmp_path, key):
    with pytest.raises(KeyboardInterrupt):
        run_blocks(make_job(), noisy_block_fn, key, tmp_path / "o", fingerprint=FP, progress=False,
                   describe=lambda i, s: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(UserInputError, match="already holds an ntga.generate run; pass --resume"):
        run_blocks(make_job(), noisy_block_fn, key, tmp_path / "o", fingerprint=FP, progress=False)


def test_resume_with_other_settings_is_refused(tmp_path, key):
    job = make_job()
    with pytest.raises(KeyboardInterrupt):
        run_blocks(job, noisy_block_fn, key, tmp_path / "r", fingerprint=FP, progress=False,
                   describe=lambda i, s: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(UserInputError, match="different settings.*eps: was 0.1, now 0.2"):
        run_blocks(job, noisy_block_fn, key, tmp_path / "r", fingerprint={**FP, "eps": 0.2}, resume=True,
                   progress=False)


def test_shards_split_the_blocks_and_the_last_one_assembles(tmp_path, key):
    job = make_job()
    full, _ = run_blocks(job, noisy_block_fn, key, tmp_path / "full", fingerprint=FP, progress=False)
    out = tmp_path / "sharded"
    x, _ = run_blocks(job, noisy_block_fn, key, out, fingerprint=FP, shard=(0, 2), progress=False)
    assert x is None
    assert WorkDir(out).finished(5) == [0, 2, 4]
    x, _ = run_blocks(job, noisy_block_fn, key, out, fingerprint=FP, shard=(1, 2), resume=True, progress=False)
    np.testing.assert_array_equal(x, full)


def test_block_file_of_wrong_shape_is_not_served(tmp_path):
    store = WorkDir(tmp_path / "b")
    store.open(FP, resume=False)
    store.save_block(1, np.zeros((2, 4, 4, 1), np.uint8), {})  # wrong shape: must not be used
    assert store.load_block(1, (5, 4, 4, 1)) is None


MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, {tests!r})
    from test_runner import make_job, noisy_block_fn, FP, run_blocks
    assert len(jax.local_devices()) == 2, jax.local_devices()
    job = make_job()
    x2, _ = run_blocks(job, noisy_block_fn, jax.random.key(0), {out2!r}, fingerprint=FP, progress=False)
    x1, _ = run_blocks(job, noisy_block_fn, jax.random.key(0), {out1!r}, fingerprint=FP, progress=False,
                       devices=jax.local_devices()[:1])
    np.save({res!r}, np.stack([x1, x2]))
    """
)


@pytest.mark.slow
def test_two_devices_give_the_same_output_as_one(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    script = MULTI_DEVICE_SCRIPT.format(tests=os.path.dirname(__file__), out1=str(tmp_path / "one"),
                                        out2=str(tmp_path / "two"), res=str(tmp_path / "res.npy"))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path)
    x1, x2 = np.load(tmp_path / "res.npy")
    np.testing.assert_array_equal(x1, x2)
