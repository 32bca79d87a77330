"""What the tools guarantee when the user or the machine misbehaves (issue: reliability).

Each test is one case a careful user tried: a user's files in --out, damaged work
files, two runs on one directory, link loops and decompression bombs in a dataset,
numerics that cannot work, a one-class dataset, unwritable paths and full disks,
leftovers of a killed export. Every one must end in the correct result or one
``error:`` line (exit 2), with nothing of the user's lost.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import socket
import stat
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from defenses.evaluate import main as evaluate_main
from ntga import outdir, workfiles
from ntga.data import load_dataset
from ntga.data.limits import DecodeLimits
from ntga.data.writers import write_image_folder, write_npz
from ntga.errors import UserInputError, run_cli
from ntga.export import main as export_main
from ntga.generate import main as generate_main
from ntga.poisondir import read_poison_dir

from test_runner import FP, make_job, noisy_block_fn, run_blocks

TINY = ["--dataset", "digits", "--train-size", "48", "--target-size", "30", "--block-size", "16",
        "--steps", "2", "--no-progress"]
EVAL = ["--model", "fnn-relu", "--model-opt", "width=8", "--epochs", "1", "--batch-size", "16",
        "--test-size", "40", "--seeds", "1", "--no-progress"]


def cli(main, argv, capsys) -> tuple[int, str]:
    """Runs a CLI as `python -m` does; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    return exc.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def poison_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "poisons"
    assert generate_main([*TINY, "--out", str(out)]) == 0
    return out


# ----------------------------------------------------------------------------- 1. a user's files in --out


def test_evaluate_never_replaces_a_users_results_md(poison_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.md").write_text("my notes")
    (out / "accuracy_bars.png").write_bytes(b"my figure")
    for extra in ([], ["--resume"]):
        code, err = cli(evaluate_main, ["--poisons", str(poison_dir), *EVAL, "--out", str(out), *extra], capsys)
        assert code == 2 and err.startswith("error: ") and "does not hold a defenses.evaluate run" in err
        assert "Traceback" not in err
    assert (out / "results.md").read_text() == "my notes"
    assert (out / "accuracy_bars.png").read_bytes() == b"my figure"
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_bars.png", "results.md"]


# ----------------------------------------------------------------------------- 2. checksummed work files


def test_workfile_detects_a_flipped_bit_and_a_missing_checksum(tmp_path, capsys):
    path = tmp_path / "w.npz"
    workfiles.save_arrays(path, x=np.arange(100, dtype=np.uint8))
    np.testing.assert_array_equal(workfiles.load_arrays(path)["x"], np.arange(100, dtype=np.uint8))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert workfiles.load_arrays(path) is None
    assert "does not match its checksum" in capsys.readouterr().err
    assert not path.exists() and not (tmp_path / "w.npz.sha256").exists()  # deleted, so it is recomputed
    workfiles.save_arrays(path, x=np.zeros(3))
    (tmp_path / "w.npz.sha256").unlink()
    assert workfiles.load_arrays(path) is None and not path.exists()


def test_a_kill_while_a_work_file_is_rewritten_keeps_the_previous_version(tmp_path, monkeypatch):
    from ntga import atomic

    path = tmp_path / "ckpt.npz"
    workfiles.save_arrays(path, round=np.int64(1))
    real = atomic.write_bytes

    def killed_while_writing_the_data(p, data):
        if Path(p) == path:
            raise KeyboardInterrupt  # after the sidecar vouched for both versions, before the data landed
        return real(p, data)

    monkeypatch.setattr(atomic, "write_bytes", killed_while_writing_the_data)
    with pytest.raises(KeyboardInterrupt):
        workfiles.save_arrays(path, round=np.int64(2))
    monkeypatch.setattr(atomic, "write_bytes", real)
    assert int(workfiles.load_arrays(path)["round"]) == 1  # the previous version is still verified
    workfiles.save_arrays(path, round=np.int64(3))
    assert int(workfiles.load_arrays(path)["round"]) == 3
    assert len((tmp_path / "ckpt.npz.sha256").read_text().splitlines()) == 1


def test_a_work_file_without_checksum_is_recomputed_and_named(tmp_path, key, capsys):
    full, _ = run_blocks(make_job(), noisy_block_fn, key, tmp_path / "full", fingerprint=FP, progress=False)
    out = tmp_path / "r"
    _interrupted_run(out, key, after_blocks=2)
    (out / ".work" / "block_00000.npy.sha256").unlink()  # e.g. written by an older version
    resumed, _ = run_blocks(make_job(), noisy_block_fn, key, out, fingerprint=FP, resume=True, progress=False)
    np.testing.assert_array_equal(resumed, full)
    assert "block_00000.npy has no checksum" in capsys.readouterr().err


def _interrupted_run(out: Path, key, after_blocks: int) -> None:
    seen = []

    def stop(i, s):
        seen.append(i)
        if len(seen) == after_blocks:
            raise KeyboardInterrupt
        return f"block {i}"

    with pytest.raises(KeyboardInterrupt):
        run_blocks(make_job(), noisy_block_fn, key, out, fingerprint=FP, progress=False, describe=stop)


@pytest.mark.parametrize("damage", ["flip a bit", "truncate", "edit the stats"])
def test_a_damaged_block_is_recomputed_and_the_output_matches_an_uninterrupted_run(tmp_path, key, damage, capsys):
    full, _ = run_blocks(make_job(), noisy_block_fn, key, tmp_path / "full", fingerprint=FP, progress=False)
    out = tmp_path / "r"
    _interrupted_run(out, key, after_blocks=3)
    npy, meta = out / ".work" / "block_00001.npy", out / ".work" / "block_00001.json"
    if damage == "flip a bit":
        data = bytearray(npy.read_bytes())
        data[-1] ^= 0x10
        npy.write_bytes(bytes(data))
    elif damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:-7])
    else:
        stats = json.loads(meta.read_text())
        stats["seconds"] = 0.0
        meta.write_text(json.dumps(stats))
    resumed, summary = run_blocks(make_job(), noisy_block_fn, key, out, fingerprint=FP, resume=True, progress=False)
    np.testing.assert_array_equal(resumed, full)
    assert summary.complete
    assert "block_00001" in capsys.readouterr().err  # the user is told which work was redone


def test_a_corrupt_method_checkpoint_is_retrained_not_trusted(tmp_path, capsys):
    from ntga.methods.tree_io import load_tree, save_tree

    tree = {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    path = tmp_path / "ckpt.npz"
    save_tree(path, tree, rounds=4)
    loaded, extras = load_tree(path, tree, extras=("rounds",))
    assert int(extras["rounds"]) == 4
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert load_tree(path, tree, extras=("rounds",)) is None
    assert "checksum" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 3. one writer per output


def test_a_second_run_on_a_directory_in_use_is_refused_at_once(tmp_path, capsys):
    out = tmp_path / "busy"
    assert generate_main([*TINY, "--out", str(out)]) == 0
    with outdir.DirLock(out):  # another process holding the run's lock
        code, err = cli(generate_main, [*TINY, "--out", str(out), "--resume"], capsys)
    assert code == 2 and "is in use by another run (pid" in err and "Traceback" not in err
    read_poison_dir(out)  # still complete and verified


def test_evaluate_refuses_a_results_directory_in_use(poison_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    out.mkdir()
    with outdir.DirLock(out):
        code, err = cli(evaluate_main, ["--poisons", str(poison_dir), *EVAL, "--out", str(out)], capsys)
    assert code == 2 and "in use by another run" in err
    assert outdir.entries(out) == []


def test_a_lock_dies_with_its_holder_and_is_removed_on_release(tmp_path):
    lock = outdir.DirLock(tmp_path).acquire()
    assert "pid" in (tmp_path / outdir.LOCK_NAME).read_text()
    with pytest.raises(UserInputError, match="in use"):
        outdir.DirLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / outdir.LOCK_NAME).exists()
    # A stale lock file left by a killed process (no holder) does not block anyone.
    (tmp_path / outdir.LOCK_NAME).write_text("pid 1 on elsewhere")
    with outdir.DirLock(tmp_path):
        pass


def test_shards_share_a_directory_but_a_shard_runs_once(tmp_path):
    with outdir.RunLocks(tmp_path, (0, 2)):
        with outdir.RunLocks(tmp_path, (1, 2)):  # the other shard: allowed
            pass
        with pytest.raises(UserInputError, match="in use"):
            outdir.RunLocks(tmp_path, (0, 2)).__enter__()  # the same shard twice
        with pytest.raises(UserInputError, match="in use"):
            outdir.RunLocks(tmp_path, (0, 1)).__enter__()  # an unsharded run


@pytest.mark.slow
def test_a_refused_shard_never_deletes_another_shards_work(tmp_path, capsys):
    out = tmp_path / "sh"
    assert generate_main([*TINY, "--shard", "1/2", "--out", str(out)]) == 0
    work = sorted(p.name for p in (out / ".work").iterdir())
    # Started at the same time without --resume, or with a typo in a setting: refused, and harmless.
    for extra in ([], ["--resume", "--steps", "3"]):
        code, err = cli(generate_main, [*TINY, "--shard", "2/2", "--out", str(out), *extra], capsys)
        assert code == 2 and "error:" in err
        assert sorted(p.name for p in (out / ".work").iterdir()) == work
    assert generate_main([*TINY, "--shard", "2/2", "--resume", "--out", str(out)]) == 0
    read_poison_dir(out)


@pytest.mark.slow
def test_a_late_shard_never_rewrites_a_finished_directory(tmp_path, monkeypatch, capsys):
    """Process B reaches assembly after process A completed the directory: B leaves it alone."""
    from ntga.run.blocks import BlockRunner

    out = tmp_path / "sh"
    assert generate_main([*TINY, "--shard", "1/2", "--out", str(out)]) == 0
    real_run = BlockRunner.run
    finished = {}

    def then_another_process_finishes(*args, **kwargs):
        result = real_run(*args, **kwargs)  # B has all blocks ...
        monkeypatch.setattr(BlockRunner, "run", real_run)
        assert generate_main([*TINY, "--shard", "1/2", "--resume", "--out", str(out)]) == 0  # ... A assembles
        finished["manifest"] = (out / "manifest.json").read_bytes()
        return result

    monkeypatch.setattr(BlockRunner, "run", then_another_process_finishes)
    assert generate_main([*TINY, "--shard", "2/2", "--resume", "--out", str(out)]) == 0
    assert "was completed by another process of this run" in capsys.readouterr().out
    assert (out / "manifest.json").read_bytes() == finished["manifest"]  # not deleted, not rewritten
    poisons = read_poison_dir(out)
    single = tmp_path / "single"
    assert generate_main([*TINY, "--out", str(single)]) == 0
    np.testing.assert_array_equal(poisons.x, read_poison_dir(single).x)
    assert not (out / ".work").exists()


# ----------------------------------------------------------------------------- 4-5. hostile dataset folders


def _tiny_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8)
    y = np.array([0, 1] * 4)
    return write_image_folder(root, _arrays(x, y))


def _arrays(x, y):
    from ntga.data.dataset import Arrays

    return Arrays(x_train=x, y_train=y, x_test=x[:4], y_test=y[:4], class_names=("a", "b"))


@pytest.mark.parametrize("links", [1, 3])
def test_symlink_loops_in_a_class_folder_are_an_error_not_a_hang(tmp_path, links):
    root = _tiny_folder(tmp_path / "d")
    for i in range(links):
        os.symlink(root / "train" / "a", root / "train" / "a" / f"loop{i}")
    with pytest.raises(UserInputError, match="symbolic-link loop|nested folder"):
        load_dataset(f"folder:{root}", use_cache=False)


def test_two_links_to_one_folder_are_not_a_loop(tmp_path):
    root = _tiny_folder(tmp_path / "d")
    shared = tmp_path / "shared-b"
    (root / "train" / "b").rename(shared)
    import shutil

    shutil.rmtree(root / "test" / "b")
    os.symlink(shared, root / "train" / "b")
    os.symlink(shared, root / "test" / "b")  # the same folder reached twice, neither inside itself
    ds = load_dataset(f"folder:{root}", use_cache=False)
    assert ds.x_train.shape == (8, 6, 6, 3) and ds.x_test.shape == (6, 6, 6, 3)


def test_a_broken_symlink_is_named(tmp_path):
    root = _tiny_folder(tmp_path / "d")
    os.symlink(root / "nowhere.png", root / "train" / "a" / "gone.png")
    with pytest.raises(UserInputError, match="gone.png is a symbolic link that leads nowhere"):
        load_dataset(f"folder:{root}", use_cache=False)


def test_a_png_bomb_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    root = _tiny_folder(tmp_path / "d")
    buf = io.BytesIO()
    Image.new("L", (5000, 4100)).save(buf, "PNG")  # ~20 MB of pixels in ~20 KB of PNG
    assert len(buf.getvalue()) < 100_000
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(root.rglob("*.png")):
            zf.write(p, p.relative_to(root).as_posix())
        zf.writestr("train/a/zz-bomb.png", buf.getvalue())

    real_load = Image.Image.load

    def no_decoding_of_the_bomb(self):
        assert self.size[0] < 1000, "the bomb's pixels were decoded"
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", no_decoding_of_the_bomb)
    with pytest.raises(UserInputError, match=r"zz-bomb.png .* is 5000x4100 pixels .*--max-image-side 5000") as err:
        load_dataset(f"folder:{archive}", use_cache=False)
    assert "cannot decode" not in str(err.value)


def test_the_total_decoded_size_is_bounded_and_the_limit_can_be_raised(tmp_path):
    root = _tiny_folder(tmp_path / "d")
    with pytest.raises(UserInputError, match=r"more than 1e-06 GB .*--max-decoded-gb"):
        load_dataset(f"folder:{root}", use_cache=False, limits=DecodeLimits(max_decoded_gb=1e-6))
    assert load_dataset(f"folder:{root}", use_cache=False, limits=DecodeLimits(max_decoded_gb=1e-3)).x_train.shape \
        == (8, 6, 6, 3)
    with pytest.raises(UserInputError, match=r"is 6x6 pixels .* limit of 5 pixels per side"):
        load_dataset(f"folder:{root}", use_cache=False, limits=DecodeLimits(max_side=5))


def test_an_idx_header_cannot_declare_gigabytes_or_wrap_around(tmp_path):
    from ntga.data.idx import read_idx

    header = (0x803).to_bytes(4, "big") + b"".join((2**32 - 1).to_bytes(4, "big") for _ in range(3))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + b"\0" * 64))
    with pytest.raises(UserInputError, match=r"4294967295x4294967295 pixels"):
        read_idx(path, "images")
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2**20, 2**10, 2**10))
    path.write_bytes(header + b"\0" * 10)
    with pytest.raises(UserInputError, match=r"more than 4 GB"):
        read_idx(path, "images")
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (3, 4, 4))
    path.write_bytes(header + b"\0" * 10)
    with pytest.raises(UserInputError, match=r"header says 3x4x4 values \(64 bytes in all\) but the file has 26 "
                                            r"bytes; it is truncated"):
        read_idx(path, "images")


# ----------------------------------------------------------------------------- 6-7. numerics and classes


def test_numerics_that_cannot_work_are_refused_before_any_block(tmp_path, capsys):
    out = tmp_path / "nan"
    code, err = cli(generate_main, [*TINY, "--t", "1e300", "--out", str(out)], capsys)
    # This wording comes only from the check before the first block (a block's own check says "block N: ...").
    assert code == 2 and "the attack's loss or gradient is not finite for these settings" in err
    assert "--t" in err and "Traceback" not in err and "block 0" not in capsys.readouterr().out
    assert not out.exists()  # nothing half-made left behind


def test_images_without_pixels_are_refused_at_load(tmp_path):
    f = write_npz(tmp_path / "z.npz", _arrays(np.zeros((4, 0, 8, 1), np.uint8), np.array([0, 1, 0, 1])))
    with pytest.raises(UserInputError, match="are 8x0 pixels .*at least one pixel"):
        load_dataset(f"npz:{f}")


@pytest.mark.parametrize("method", ["ntga", "random"])
def test_a_single_class_dataset_is_refused_by_generate(tmp_path, capsys, method):
    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    from ntga.data.dataset import Arrays

    f = write_npz(tmp_path / "one.npz", Arrays(x, np.zeros(40, int), x[:5], np.zeros(5, int), ("only",)))
    out = tmp_path / "o"
    code, err = cli(generate_main, ["--dataset", f"npz:{f}", "--method", method, "--target-size", "8",
                                    "--no-progress", "--out", str(out)], capsys)
    assert code == 2 and "holds 1 class(es) ['only']" in err and "at least 2 classes" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- 8. one error line, not a traceback


def test_out_naming_an_existing_file(tmp_path, capsys, poison_dir):
    f = tmp_path / "file.txt"
    f.write_text("keep")
    for main, argv in ((generate_main, TINY), (evaluate_main, ["--poisons", str(poison_dir), *EVAL])):
        code, err = cli(main, [*argv, "--out", str(f)], capsys)
        assert code == 2 and "exists and is not a directory" in err and "Traceback" not in err
    code, err = cli(export_main, ["--poisons", str(poison_dir), "--no-test", "--out", str(f)], capsys)
    assert code == 2 and "exists and is not an empty directory" in err
    assert f.read_text() == "keep"


def test_an_unwritable_out_gives_one_error_line(tmp_path, capsys, monkeypatch, poison_dir):
    # Root ignores permission bits, so the refusal is injected where the OS would raise it.
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if "ro" in self.parts:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    target = tmp_path / "ro" / "out"
    for main, argv in ((generate_main, TINY), (evaluate_main, ["--poisons", str(poison_dir), *EVAL]),
                       (export_main, ["--poisons", str(poison_dir), "--no-test"])):
        code, err = cli(main, [*argv, "--out", str(target)], capsys)
        assert code == 2 and err.count("\n") == 1 and "Permission denied" in err, err


def test_a_full_disk_gives_one_error_line_and_resume_works_after(tmp_path, capsys, monkeypatch):
    from ntga import atomic

    real = atomic.write_bytes
    calls = {"n": 0}

    def disk_fills_up(path, data):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(atomic, "write_bytes", disk_fills_up)
    out = tmp_path / "full"
    code, err = cli(generate_main, [*TINY, "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error: ") and "No space left on device" in err and "Traceback" not in err
    monkeypatch.setattr(atomic, "write_bytes", real)
    assert generate_main([*TINY, "--out", str(out), "--resume"]) == 0
    read_poison_dir(out)


def test_the_preview_path_unwritable(tmp_path, capsys):
    from ntga.data.cli import main as data_main

    code, err = cli(data_main, ["--preview", str(tmp_path)], capsys)  # a directory, not a file
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err


def test_other_os_errors_keep_their_traceback():
    def bug(argv):
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError, match="Bad file descriptor"):
        run_cli(bug, [])


@pytest.mark.parametrize("seed", [str(2**63), str(2**64), "-1"])
def test_seed_out_of_range_is_an_argument_error(seed, capsys):
    with pytest.raises(SystemExit) as exc:
        generate_main([*TINY, "--seed", seed, "--out", "unused"])
    assert exc.value.code == 2 and "--seed" in capsys.readouterr().err


def test_target_chunk_zero_is_refused(tmp_path, capsys):
    code, err = cli(generate_main, [*TINY, "--target-chunk", "0", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "target_chunk=0 is invalid" in err


def test_a_huge_uint64_label_is_reported_as_stored(tmp_path):
    x = np.zeros((4, 8, 8, 1), np.uint8)
    y = np.array([0, 1, 0, 2**64 - 1], np.uint64)
    f = tmp_path / "u.npz"
    np.savez(f, x_train=x, y_train=y, x_test=x, y_test=np.array([0, 1, 0, 1], np.uint64))
    with pytest.raises(UserInputError, match="holds label 18446744073709551615"):
        load_dataset(f"npz:{f}")
    from ntga.poisondir.checks import check_labels

    with pytest.raises(UserInputError, match="label 18446744073709551615, too large"):
        check_labels(y, 4, None)


# ----------------------------------------------------------------------------- 9. exports


def test_a_killed_exports_leftovers_are_removed_and_exports_are_readable(poison_dir, tmp_path, capsys):
    dest = tmp_path / "pub"
    host = socket.gethostname()
    stale = tmp_path / f".pub.partial-{host}-999999999-abcd"  # a pid that cannot be alive
    (stale / "train").mkdir(parents=True)
    alive = tmp_path / f".pub.partial-{host}-{os.getpid()}-ef01"  # a running export (this process): kept
    alive.mkdir()
    elsewhere = tmp_path / ".pub.partial-otherhost-999999999-abcd"  # another machine's, on a shared disk: kept
    elsewhere.mkdir()
    old = os.umask(0o022)
    try:
        assert export_main(["--poisons", str(poison_dir), "--no-test", "--out", str(dest)]) == 0
    finally:
        os.umask(old)
    assert not stale.exists() and alive.exists() and elsewhere.exists()
    assert "left behind by an interrupted export" in capsys.readouterr().err
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [dest, *dest.rglob("*")] if p.is_dir()}
    assert modes == {0o755}
    assert {stat.S_IMODE(p.stat().st_mode) for p in dest.rglob("*.png")} == {0o644}


def test_jax_key_range_matches_the_seed_bound():
    from ntga.data.cli import MAX_SEED

    jax.random.key(MAX_SEED)
    with pytest.raises(OverflowError):
        jax.random.key(MAX_SEED + 1)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "somewhere")


def test_a_full_disk_during_export_gives_one_error_line_and_no_partial_folder(poison_dir, tmp_path, capsys,
                                                                              monkeypatch):
    monkeypatch.setattr(Image.Image, "save", _enospc)
    dest = tmp_path / "pub"
    code, err = cli(export_main, ["--poisons", str(poison_dir), "--no-test", "--out", str(dest)], capsys)
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither dest nor a hidden partial folder


@pytest.mark.slow
def test_a_full_disk_while_drawing_figures_keeps_the_results(poison_dir, tmp_path, capsys, monkeypatch):
    from defenses.evaluation import figures

    monkeypatch.setattr(figures, "_save", _enospc)
    out = tmp_path / "ev"
    code, err = cli(evaluate_main, ["--poisons", str(poison_dir), *EVAL, "--out", str(out)], capsys)
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and len(results["runs"]) == 2  # the training runs are not lost
    monkeypatch.undo()
    assert evaluate_main(["--poisons", str(poison_dir), *EVAL, "--out", str(out), "--resume"]) == 0
    assert (out / "accuracy_bars.png").exists()
