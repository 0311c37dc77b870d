"""Tests of kpjax.io.trajectory_store: on-disk Θ and out-of-core fits."""

import ml_dtypes
import numpy as np
import pytest

from kpjax import koopman
from kpjax.io import trajectory_store as ts
from oracles import quadratic_gd

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_rows_roundtrip_in_each_dtype_and_survive_reopening(tmp_path, name):
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(9, 1000)).astype(np.float32)
    path = tmp_path / "theta.kpt"
    with ts.create_store(path, 1000, 9, dtype=name, metadata={"model": "x"}) as store:
        store.append(theta[0])  # one row (N,)
        store.append(theta[1:4])  # k rows (k, N)
        assert store.shape == (4, 1000)
    with ts.open_store(path, mode="r+") as store:
        assert store.rows == 4 and store.dtype == np.dtype(DTYPES[name])
        store.append(theta[4:])
    expected = theta.astype(DTYPES[name])
    with ts.open_store(path, read_chunk_bytes=1) as store:
        assert store.shape == (9, 1000) and store.metadata == {"model": "x"}
        np.testing.assert_array_equal(store.read_rows(0, 9), expected)
        # Column panels, within and across read chunks (4096 columns here).
        np.testing.assert_array_equal(store[:, 300:700], expected[:, 300:700])
        np.testing.assert_array_equal(store[2:5, 990:1200], expected[2:5, 990:])


def test_column_sweep_with_small_chunks_and_prefetch(tmp_path):
    theta = np.random.default_rng(1).normal(size=(5, 20000)).astype(np.float32)
    with ts.create_store(tmp_path / "t", 20000, 5, read_chunk_bytes=5 * 4 * 8192) as store:
        store.append(theta)
        assert store._chunk_columns == 8192
        panels = [store[:, a : a + 4096] for a in range(0, 20000, 4096)]
    np.testing.assert_array_equal(np.concatenate(panels, axis=1), theta)


def test_fit_from_store_equals_in_memory_fit(tmp_path):
    # A linear image of the oracle is linear with the same spectrum; its
    # fixed-point mode is the image of θ*. N = 9000 spans several read chunks.
    traj = quadratic_gd(n=200, steps=30)
    embed = np.random.default_rng(5).normal(size=(200, 9000)) / np.sqrt(200)
    theta = (traj.snapshots @ embed).astype(np.float32)
    with ts.create_store(tmp_path / "q", 9000, 31) as store:
        for row in theta:
            store.append(row)
    with ts.open_store(tmp_path / "q", read_chunk_bytes=31 * 4 * 4096) as store:
        k_disk = koopman.gram(store, block_size=1024)
        fit = koopman.fit_trajectory(store, block_size=1024)
        mode_disk = np.asarray(koopman.fixed_point_mode(store, fit))
    k_mem = koopman.gram(theta, block_size=1024)
    np.testing.assert_array_equal(np.asarray(k_disk), np.asarray(k_mem))
    fit_mem = koopman.fit_trajectory(theta, block_size=1024)
    mode_mem = np.asarray(koopman.fixed_point_mode(theta, fit_mem))
    np.testing.assert_array_equal(np.asarray(fit.eigenvalues), np.asarray(fit_mem.eigenvalues))
    np.testing.assert_allclose(mode_disk, mode_mem, rtol=1e-12, atol=1e-15)
    # The oracle: λ = 1 with mode θ*.
    assert abs(complex(fit.eigenvalues[0]) - 1.0) < 1e-4
    np.testing.assert_allclose(mode_disk.real, traj.theta_star @ embed, rtol=1e-3, atol=1e-4)


def test_a_row_range_is_a_window_of_the_trajectory(tmp_path):
    theta = np.random.default_rng(2).normal(size=(20, 5000)).astype(np.float32)
    with ts.create_store(tmp_path / "w", 5000, 20, read_chunk_bytes=20 * 4 * 4096) as store:
        store.append(theta)
        view = store.row_range(6, 15)
        assert view.shape == (9, 5000) and view.ndim == 2 and len(view) == 9
        np.testing.assert_array_equal(view[:, 4000:4500], theta[6:15, 4000:4500])
        np.testing.assert_array_equal(view[2:4, :], theta[8:10])
        # The Koopman functions read it as the sliced array.
        np.testing.assert_array_equal(np.asarray(koopman.gram(view, block_size=1024)),
                                      np.asarray(koopman.gram(theta[6:15], block_size=1024)))
        with pytest.raises(ValueError, match="not within the 20 written"):
            store.row_range(5, 21)


def _write(path, data=b"", size=None):
    with open(path, "wb") as f:
        f.write(data)
        if size is not None:
            f.truncate(size)


def test_missing_corrupt_and_truncated_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trajectory store"):
        ts.open_store(tmp_path / "missing")
    _write(tmp_path / "empty")
    with pytest.raises(ValueError, match="bad magic"):
        ts.open_store(tmp_path / "empty")
    np.save(tmp_path / "theta.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="bad magic"):
        ts.open_store(tmp_path / "theta.npy")

    path = tmp_path / "good"
    with ts.create_store(path, 100, 4, dtype="float16") as store:
        store.append(np.ones((4, 100)))
    raw = path.read_bytes()
    _write(tmp_path / "cut", raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        ts.open_store(tmp_path / "cut")
    _write(tmp_path / "cut_header", raw[:30])
    with pytest.raises(ValueError, match="corrupt header"):
        ts.open_store(tmp_path / "cut_header")
    garbled = bytearray(raw)
    garbled[26:30] = b"\xff\xff\xff\xff"
    _write(tmp_path / "garbled", bytes(garbled))
    with pytest.raises(ValueError, match="corrupt header"):
        ts.open_store(tmp_path / "garbled")
    too_many = bytearray(raw)
    too_many[8:16] = (5).to_bytes(8, "little")
    _write(tmp_path / "rows", bytes(too_many))
    with pytest.raises(ValueError, match="corrupt header"):
        ts.open_store(tmp_path / "rows")


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        ts.create_store(tmp_path / "a", 10, 3, dtype="float64")
    with pytest.raises(ValueError, match="JSON-serializable"):
        ts.create_store(tmp_path / "b", 10, 3, metadata={"x": object()})
    with ts.create_store(tmp_path / "c", 10, 3) as store:
        with pytest.raises(ValueError, match="shape"):
            store.append(np.zeros(11))
        store.append(np.zeros((3, 10)))
        with pytest.raises(ValueError, match="cannot append"):
            store.append(np.zeros(10))
        with pytest.raises(TypeError, match="two slices"):
            store[0]
    with pytest.raises(FileExistsError):
        ts.create_store(tmp_path / "c", 10, 3)
    with ts.open_store(tmp_path / "c") as store:
        with pytest.raises(ValueError, match="read-only"):
            store.append(np.zeros(10))
