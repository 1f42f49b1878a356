"""Tests for qcal.stats: exact, order-free shard merging of tensor statistics."""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import pytest

from qcal import stats as S
from qcal.stats import K_MIN, TensorStats, floor_index, load_stats, merge_all, required_k, save_stats


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def reference_stats(values: np.ndarray, max_bins: int = S.DEFAULT_MAX_BINS) -> TensorStats:
    """Independent slow reference: exact Python arithmetic per element."""
    v = np.asarray(values, dtype=np.float64).ravel()
    fin = v[np.isfinite(v)]
    ref = TensorStats(
        max_bins=max_bins,
        nan_count=int(np.isnan(v).sum()),
        posinf_count=int((v == np.inf).sum()),
        neginf_count=int((v == -np.inf).sum()),
    )
    if fin.size == 0:
        return ref
    lo, hi = float(fin.min()), float(fin.max())
    k = required_k(lo, hi, max_bins)
    origin = floor_index(lo, k)
    hist = Counter(floor_index(x, k) - origin for x in fin.tolist())
    counts = np.zeros(floor_index(hi, k) - origin + 1, dtype=np.int64)
    for i, c in hist.items():
        counts[i] = c
    ref.count, ref.min, ref.max, ref.k, ref.origin, ref.counts = fin.size, lo, hi, k, origin, counts
    return ref


def assert_same(a: TensorStats, b: TensorStats) -> None:
    assert a.k == b.k
    assert a.origin == b.origin
    assert a.count == b.count
    assert (a.nan_count, a.posinf_count, a.neginf_count) == (b.nan_count, b.posinf_count, b.neginf_count)
    # min/max must be bit-identical, not just close
    assert np.array([a.min, a.max]).tobytes() == np.array([b.min, b.max]).tobytes()
    assert a.counts.dtype == b.counts.dtype == np.int64
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a == b


def make_images(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Per-image float32 tensors whose ranges differ by orders of magnitude."""
    images = []
    for i in range(n):
        scale = 10.0 ** rng.uniform(-4, 3)
        shift = rng.choice([0.0, 3.0 * scale, -5.0 * scale])
        x = (rng.standard_normal(rng.integers(50, 3000)) * scale + shift).astype(np.float32)
        if i % 5 == 0:
            x = np.maximum(x, 0)  # ReLU-like: exact zeros
        images.append(x.reshape(-1, 2) if x.size % 2 == 0 else x)
    images[3] = np.full(17, 0.0, dtype=np.float32)  # an all-zero image
    images[7] = np.full(9, -2.5e-7, dtype=np.float32)  # a constant, tiny, negative image
    return images


def stream(images, max_bins=S.DEFAULT_MAX_BINS) -> TensorStats:
    s = TensorStats(max_bins=max_bins)
    for x in images:
        s.update(x)
    return s


# --------------------------------------------------------------------------
# exact shard merge
# --------------------------------------------------------------------------

@pytest.mark.parametrize("max_bins", [S.DEFAULT_MAX_BINS, 64, 2])
def test_sharded_merge_equals_unsharded(max_bins):
    rng = np.random.default_rng(1234 + max_bins)
    images = make_images(rng, 40)
    unsharded = stream(images, max_bins)
    unsharded.validate()
    assert unsharded.counts.size <= max_bins

    for trial in range(6):
        n_shards = int(rng.integers(2, 8))
        assignment = rng.integers(0, n_shards, len(images))
        shards = []
        for s in range(n_shards):
            mine = [images[i] for i in rng.permutation(len(images)) if assignment[i] == s]
            shards.append(stream(mine, max_bins))  # some shards may be empty
        order = rng.permutation(n_shards)
        # pairwise merge in a random order ...
        merged = shards[order[0]]
        for i in order[1:]:
            merged = merged.merge(shards[i])
        assert_same(merged, unsharded)
        # ... and via merge_all of per-shard dicts
        merged_all = merge_all([{"t": shards[i]} for i in order])["t"]
        assert_same(merged_all, unsharded)


def test_update_order_does_not_matter_and_matches_reference():
    rng = np.random.default_rng(7)
    images = make_images(rng, 25)
    forward = stream(images)
    backward = stream(images[::-1])
    concatenated = TensorStats.from_values(np.concatenate([x.ravel() for x in images]))
    reference = reference_stats(np.concatenate([x.ravel() for x in images]))
    for s in (backward, concatenated, reference):
        assert_same(forward, s)


def test_merge_is_pure_and_handles_empty():
    a = TensorStats.from_values(np.array([1.0, 2.0], np.float32))
    b = TensorStats.from_values(np.array([-300.0], np.float32))
    a_before, b_before = a.copy(), b.copy()
    m = a.merge(b)
    assert_same(a, a_before)
    assert_same(b, b_before)
    assert m.count == 3 and m.min == -300.0 and m.max == 2.0
    assert_same(TensorStats().merge(a), a)
    assert_same(a.merge(TensorStats()), a)
    assert TensorStats().merge(TensorStats()).empty


def test_merge_rejects_different_max_bins():
    with pytest.raises(ValueError):
        TensorStats(max_bins=64).merge(TensorStats(max_bins=128))


def test_coarsening_with_negative_indices_is_exact():
    # Forces several coarsening steps across zero with odd negative origins.
    max_bins = 8
    values = [-0.75, 0.5, -3.0, 5.25, -17.0, 0.125, 40.0]
    s = TensorStats(max_bins=max_bins)
    for v in values:
        s.update(np.array([v]))
        s.validate()
    assert_same(s, reference_stats(np.array(values), max_bins))


# --------------------------------------------------------------------------
# k selection and bin assignment
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "lo,hi",
    [(0.0, 0.0), (-1.0, 1.0), (1e-30, 2e-30), (3.0, 3.0 + 2**-20), (-5e5, -4e5), (-3e38, 3e38), (0.0, 1e-12)],
)
@pytest.mark.parametrize("max_bins", [2, 3, 4096])
def test_required_k_is_minimal(lo, hi, max_bins):
    k = required_k(lo, hi, max_bins)
    assert S._bins_needed(lo, hi, k) <= max_bins
    assert k == K_MIN or S._bins_needed(lo, hi, k - 1) > max_bins


def test_floor_index_exact():
    assert floor_index(-0.5, 0) == -1
    assert floor_index(-0.0, 5) == 0
    assert floor_index(-1e-45, 10) == -1
    assert floor_index(7.0, 1) == 3
    assert floor_index(-7.0, 1) == -4
    assert floor_index(1.0, -40) == 2**40
    assert floor_index(3e38, -40) == int(3e38) * 2**40  # beyond int64


def test_bin_edges_are_exact_boundaries():
    # Values exactly on an edge belong to the bin starting there; the next
    # float below belongs to the previous bin.
    s = TensorStats.from_values(np.array([-1.0, 3.0], np.float64))
    w = s.bin_width
    edges = [-0.5, 0.0, 1.0, 2.0 - w]
    x = np.array(edges + [np.nextafter(e, -np.inf) for e in edges], np.float64)
    t = s.copy()
    t.update(x)
    assert_same(t, reference_stats(np.concatenate([[-1.0, 3.0], x])))


def test_histogram_matches_numpy_histogram():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(100_000) * 2.0, rng.exponential(5.0, 1_000)]).astype(np.float32)
    s = TensorStats.from_values(x)
    edges = s.bin_edges()
    expected, _ = np.histogram(x.astype(np.float64), bins=edges)
    np.testing.assert_array_equal(s.counts, expected)
    assert edges[0] <= s.min < edges[1] and edges[-2] <= s.max < edges[-1]
    np.testing.assert_allclose(np.diff(edges), s.bin_width)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes_agree(dtype):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 33, 17)) * 8).astype(dtype)
    s = TensorStats.from_values(x)
    assert_same(s, reference_stats(x.astype(np.float64)))
    # non-contiguous input
    assert_same(TensorStats.from_values(x[:, ::2, 1::3]), reference_stats(x[:, ::2, 1::3].astype(np.float64)))


def test_rejects_non_float():
    with pytest.raises(TypeError):
        TensorStats().update(np.arange(5))


@pytest.mark.parametrize("scale", [1e5, 1e-3])  # the k > 0 (w >= 2) and the k <= 0 kernels
def test_large_arrays_match_numpy_histogram(scale):
    # a length that is not a multiple of the kernel's four interleaved counters
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((1 << 19) + 123) * scale).astype(np.float32)
    s = TensorStats.from_values(x)
    assert (s.k > 0) == (scale > 1)
    expected, _ = np.histogram(x.astype(np.float64), bins=s.bin_edges())
    np.testing.assert_array_equal(s.counts, expected)


# --------------------------------------------------------------------------
# special inputs
# --------------------------------------------------------------------------

def test_all_zero_tensor():
    s = TensorStats.from_values(np.zeros((3, 5), np.float32))
    assert s.count == 15 and s.min == 0.0 and s.max == 0.0
    assert s.k == K_MIN and s.origin == 0
    np.testing.assert_array_equal(s.counts, [15])
    s.validate()


def test_constant_tensor_then_growth():
    s = TensorStats.from_values(np.full(10, 1e30, np.float32))
    assert s.k == K_MIN and s.counts.tolist() == [10]
    assert s.origin > np.iinfo(np.int64).max  # exact Python int, not int64
    s.update(np.array([-1e30], np.float32))
    assert_same(s, reference_stats(np.array([1e30] * 10 + [-1e30], np.float32)))


def test_negative_values():
    x = -np.linspace(0.001, 7.0, 1001)
    s = TensorStats.from_values(x)
    assert s.max == -0.001 and s.min == -7.0
    assert s.origin < 0
    assert_same(s, reference_stats(x))


def test_tiny_negative_subnormal_with_coarse_bins():
    # x * 2**-k would underflow to -0.0 here; the value must still land in bin -1.
    x = np.array([-1e-45, 1e5, 0.0, 1e-45], np.float32)
    s = TensorStats.from_values(x)
    assert s.k > 0 and s.origin == -1
    assert_same(s, reference_stats(x))


def test_extreme_float64_values():
    x = np.array([-1.5e300, 1e300, 3.0, -7e299])
    assert_same(TensorStats.from_values(x), reference_stats(x))
    # A constant huge tensor has the finest width, where x * 2**40 overflows
    # even float64: the exact slow path must take over.
    c = np.full(5, 1e300)
    assert S._work_dtype(c, K_MIN, 1e300) is None
    s = TensorStats.from_values(c)
    assert_same(s, reference_stats(c))
    s.update(np.array([-1.0]))
    assert_same(s, reference_stats(np.append(c, -1.0)))


def test_nonfinite_values_are_counted_and_excluded():
    x = np.array([1.0, np.nan, np.inf, -np.inf, np.nan, -2.0, np.inf], np.float32)
    s = TensorStats.from_values(x)
    assert (s.nan_count, s.posinf_count, s.neginf_count) == (2, 2, 1)
    assert s.nonfinite_count == 5
    assert s.count == 2 and s.min == -2.0 and s.max == 1.0
    assert_same(s, reference_stats(x))
    only_nan = TensorStats.from_values(np.full(4, np.nan, np.float32))
    assert only_nan.empty and only_nan.nan_count == 4 and only_nan.counts.size == 0
    assert_same(only_nan.merge(s), s.merge(only_nan))
    assert only_nan.merge(s).nan_count == 6


def test_empty_array_is_noop():
    s = TensorStats()
    s.update(np.zeros((0, 3), np.float32))
    assert s.empty and s == TensorStats()


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    stats = {
        "/backbone/conv1/Conv_output_0": TensorStats.from_values(rng.standard_normal(1000).astype(np.float32)),
        "head.cls:0": TensorStats.from_values(np.array([np.nan, 1e30, 2e30], np.float32)),
        "t0.counts": TensorStats(),  # a name that looks like an internal key
        "zeros": TensorStats.from_values(np.zeros(8, np.float32)),
        "small-bins": TensorStats.from_values(rng.standard_normal(100), max_bins=16),
    }
    meta = {"model": "yolo.onnx", "images": [0, 1, 2], "shard": 3}
    path = tmp_path / "sub" / "shard-3.npz"
    save_stats(path, stats, meta)
    assert sorted(os.listdir(path.parent)) == ["shard-3.npz"]  # no temp files left
    loaded, meta2 = load_stats(path)
    assert meta2 == meta
    assert list(loaded) == list(stats)
    for name in stats:
        assert_same(loaded[name], stats[name])
    # overwrite atomically with different content
    save_stats(path, {}, {})
    assert load_stats(path) == ({}, {})


def test_shard_files_merge_to_unsharded(tmp_path):
    rng = np.random.default_rng(21)
    images = make_images(rng, 12)
    names = ["a/b:0", "c.d"]
    full = {n: stream([x * (i + 1) for x in images]) for i, n in enumerate(names)}
    paths = []
    for shard in range(3):
        part = {n: stream([x * (i + 1) for x in images[shard::3]]) for i, n in enumerate(names)}
        paths.append(tmp_path / f"s{shard}.npz")
        save_stats(paths[-1], part, {"shard": shard})
    merged = merge_all(load_stats(p)[0] for p in reversed(paths))
    assert list(merged) == sorted(names)
    for n in names:
        assert_same(merged[n], full[n])


def test_corrupted_arrays_rejected():
    s = TensorStats.from_values(np.array([1.0, 2.0, 3.0]))
    arrays = s.to_arrays()
    arrays["counts"] = arrays["counts"] + 1
    with pytest.raises(ValueError):
        TensorStats.from_arrays(arrays)


def test_a_large_update_counts_every_value():
    x = np.random.default_rng(0).standard_normal(2_000_000).astype(np.float32)
    s = TensorStats.from_values(x)
    s.update(x)
    assert s.count == 2 * x.size
    assert math.isclose(s.counts.sum(), s.count)
