"""Tests for qcal.ranges: SNPE/QNN encodings and range-selection methods."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcal import ranges as R
from qcal.stats import TensorStats


# --------------------------------------------------------------------------
# helpers / fixtures
# --------------------------------------------------------------------------

def measured_mse(x: np.ndarray, lo: float, hi: float, bitwidth: int = 8) -> float:
    """Actually quantize the samples with the SNPE encoding of (lo, hi)."""
    enc = R.snpe_tf_encoding(lo, hi, bitwidth)
    return float(np.mean((R.dequantize(R.quantize(x, enc), enc) - x) ** 2))


@pytest.fixture(scope="module")
def outlier_data() -> np.ndarray:
    # MSE only clips outliers whose squared clipping error is outweighed by
    # the finer step for the bulk, i.e. when they are rare: 4 in a million.
    rng = np.random.default_rng(42)
    bulk = rng.standard_normal(1_000_000)
    outliers = np.array([-40.0, -35.0, 45.0, 50.0])
    return np.concatenate([bulk, outliers]).astype(np.float32).astype(np.float64)


@pytest.fixture(scope="module")
def outlier_stats(outlier_data) -> TensorStats:
    return TensorStats.from_values(outlier_data.astype(np.float32))


@pytest.fixture(scope="module")
def uniform_stats() -> TensorStats:
    rng = np.random.default_rng(43)
    return TensorStats.from_values(rng.uniform(-1.0, 3.0, 200_000).astype(np.float32))


@pytest.fixture(scope="module")
def relu_data() -> np.ndarray:
    rng = np.random.default_rng(44)
    return np.maximum(rng.standard_normal(200_000), 0.0).astype(np.float32).astype(np.float64)


# --------------------------------------------------------------------------
# encodings
# --------------------------------------------------------------------------

def test_snpe_documented_example():
    data = np.array([-1.8, -1.0, 0.0, 0.5])
    enc = R.snpe_tf_encoding(data.min(), data.max(), bitwidth=8)
    assert enc.min == pytest.approx(-1.803922, abs=1e-6)
    assert enc.max == pytest.approx(0.496078, abs=1e-6)
    assert enc.scale == pytest.approx(0.009020, abs=1e-6)
    assert enc.offset == -200
    assert R.quantize(data, enc).tolist() == [0, 89, 200, 255]
    # float = (q + offset) * scale; 0.0 is exact
    assert R.dequantize(200, enc) == 0.0
    assert R.dequantize(0, enc) == pytest.approx(-1.803922, abs=1e-6)


def test_all_positive_range_starts_exactly_at_zero():
    enc = R.snpe_tf_encoding(0.5, 3.0)
    assert enc.min == 0.0 and enc.offset == 0
    assert enc.max == pytest.approx(3.0)
    assert enc.scale == pytest.approx(3.0 / 255)
    assert R.quantize([0.0, 3.0, 1.5], enc).tolist() == [0, 255, 128]  # 127.5 rounds away from 0


def test_all_negative_range_ends_at_zero():
    enc = R.snpe_tf_encoding(-4.0, -1.0)
    assert enc.offset == -255
    assert enc.min == pytest.approx(-4.0)
    assert abs(enc.max) < 1e-12
    assert R.quantize(0.0, enc) == 255 and R.dequantize(255, enc) == 0.0


@pytest.mark.parametrize("lo,hi", [(0.0, 1e-6), (0.0, 0.0), (-3e-5, 2e-5), (5.0, 5.0)])
def test_min_range_enforced(lo, hi):
    enc = R.snpe_tf_encoding(lo, hi, min_range=1e-4)
    assert enc.max - enc.min >= 1e-4 * (1 - 1e-12)
    assert enc.min <= min(lo, 0.0) + 1e-12 and enc.max >= max(hi, 0.0) - enc.scale
    if max(hi, 0.0) - min(lo, 0.0) < 1e-4:
        assert enc.scale == pytest.approx(1e-4 / 255)


def test_16_bit_encoding():
    enc = R.snpe_tf_encoding(-1.0, 1.0, bitwidth=16)
    assert enc.scale == pytest.approx(2.0 / 65535)
    assert enc.offset == -32768  # round(-32767.5) half away from zero
    assert enc.min == pytest.approx(-32768 * 2.0 / 65535)
    assert enc.max == pytest.approx(enc.min + 2.0)
    x = np.linspace(enc.min, enc.max, 10_001)
    q = R.quantize(x, enc)
    assert q.min() == 0 and q.max() == 65535
    assert np.max(np.abs(R.dequantize(q, enc) - x)) <= enc.scale / 2 * (1 + 1e-9)
    assert R.quantize(0.0, enc) == 32768


def test_zero_is_exact_for_random_ranges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lo, hi = sorted(rng.normal(0, 10, 2))
        for bw in (4, 8, 16):
            enc = R.snpe_tf_encoding(lo, hi, bw)
            assert R.dequantize(R.quantize(0.0, enc), enc) == 0.0
            assert enc.min <= 0.0 <= enc.max
            assert enc.max - enc.min == pytest.approx((2**bw - 1) * enc.scale)


def test_quantize_clips_and_round_trips():
    enc = R.snpe_tf_encoding(-2.0, 6.0)
    x = np.linspace(enc.min, enc.max, 1001)
    assert np.max(np.abs(R.dequantize(R.quantize(x, enc), enc) - x)) <= enc.scale / 2 * (1 + 1e-9)
    assert R.quantize([-100.0, 100.0], enc).tolist() == [0, 255]


def test_symmetric_encoding_qnn_conventions():
    enc = R.symmetric_encoding(1.27, bitwidth=8, signed=True)
    assert enc.scale == pytest.approx(0.01)
    assert enc.offset == 0 and (enc.qmin, enc.qmax) == (-128, 127)
    assert enc.min == pytest.approx(-1.28) and enc.max == pytest.approx(1.27)
    assert R.quantize([1.27, -1.28, -5.0, 0.0, 0.0049, 0.0151], enc).tolist() == [127, -128, -128, 0, 0, 2]

    uenc = R.symmetric_encoding(1.27, bitwidth=8, signed=False)
    assert uenc.offset == -128 and (uenc.qmin, uenc.qmax) == (0, 255)
    assert R.quantize([1.27, -1.28, 0.0], uenc).tolist() == [255, 0, 128]
    # both storage forms describe the same float grid
    q = np.arange(-128, 128)
    np.testing.assert_allclose(R.dequantize(q, enc), R.dequantize(q + 128, uenc))

    e16 = R.symmetric_encoding(2.0, bitwidth=16)
    assert e16.scale == pytest.approx(2.0 / 32767) and e16.qmin == -32768
    assert R.symmetric_encoding(0.0).scale > 0  # minimum range, no division by zero


def test_invalid_encodings_rejected():
    with pytest.raises(ValueError):
        R.snpe_tf_encoding(1.0, -1.0)
    with pytest.raises(ValueError):
        R.snpe_tf_encoding(-np.inf, 1.0)
    with pytest.raises(ValueError):
        R.snpe_tf_encoding(-1.0, 1.0, bitwidth=1)


# --------------------------------------------------------------------------
# minmax / percentile
# --------------------------------------------------------------------------

def test_minmax():
    s = TensorStats.from_values(np.array([3.0, -2.0, 5.0, np.nan]))
    assert R.minmax(s) == (-2.0, 5.0)
    assert R.compute_range(s, "minmax") == (-2.0, 5.0)


def test_empty_stats_rejected_by_all_methods():
    s = TensorStats.from_values(np.array([np.nan, np.inf], np.float32))
    for name in R.METHODS:
        with pytest.raises(ValueError, match="no finite values"):
            R.compute_range(s, name)


@pytest.mark.parametrize("value", [99.0, 99.9, 99.99])
def test_percentile_against_numpy(outlier_data, outlier_stats, value):
    w = outlier_stats.bin_width
    lo, hi = R.percentile(outlier_stats, value)
    assert abs(hi - np.percentile(outlier_data, value)) <= w
    assert abs(lo - np.percentile(outlier_data, 100 - value)) <= w
    # ONNX Runtime's form: the two tails share the 100 - value percent
    lo2, hi2 = R.percentile(outlier_stats, value, split_tails=True)
    assert abs(hi2 - np.percentile(outlier_data, 100 - (100 - value) / 2)) <= w
    assert abs(lo2 - np.percentile(outlier_data, (100 - value) / 2)) <= w


def test_percentile_hand_worked():
    x = np.arange(1000, dtype=np.float64)  # 0 .. 999, bin width 0.25
    s = TensorStats.from_values(x)
    assert s.bin_width == 0.25
    lo, hi = R.percentile(s, 99.0)
    assert abs(hi - 989.01) <= 0.25 and abs(lo - 9.99) <= 0.25
    assert R.percentile(s, 100.0) == (0.0, 999.0)


def test_percentile_rejects_bad_value(uniform_stats):
    with pytest.raises(ValueError):
        R.percentile(uniform_stats, 40.0)


# --------------------------------------------------------------------------
# entropy / mse on realistic shapes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_outliers_give_tighter_range_containing_bulk(outlier_stats, method):
    lo, hi = R.compute_range(outlier_stats, method)
    span = outlier_stats.max - outlier_stats.min
    assert hi - lo < 0.5 * span  # noticeably tighter than minmax
    assert lo < -3.0 and hi > 3.0  # keeps the bulk (> 3 sigma)
    assert outlier_stats.min <= lo < hi <= outlier_stats.max


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_uniform_stays_close_to_minmax(uniform_stats, method):
    lo, hi = R.compute_range(uniform_stats, method)
    span = uniform_stats.max - uniform_stats.min
    assert abs(lo - uniform_stats.min) < 0.02 * span
    assert abs(hi - uniform_stats.max) < 0.02 * span


def test_mse_beats_minmax_on_measured_error(outlier_data, outlier_stats):
    mse_err = measured_mse(outlier_data, *R.mse(outlier_stats))
    minmax_err = measured_mse(outlier_data, *R.minmax(outlier_stats))
    assert mse_err < 0.8 * minmax_err


@pytest.mark.parametrize("method", ["entropy", "mse", "percentile"])
def test_one_sided_relu_data(relu_data, method):
    s = TensorStats.from_values(relu_data)
    lo, hi = R.compute_range(s, method)
    if method == "percentile":  # interpolates inside the [0, w) bin
        assert 0.0 <= lo <= s.bin_width
    else:
        assert lo == 0.0  # lower end stays at the data (and encoding) minimum
    assert 2.5 < hi <= s.max
    enc = R.snpe_tf_encoding(lo, hi)
    assert enc.min == 0.0


def test_one_sided_negative_data():
    x = -np.random.default_rng(5).exponential(1.0, 100_000)
    s = TensorStats.from_values(x)
    for method in ("entropy", "mse"):
        lo, hi = R.compute_range(s, method)
        assert hi == s.max and s.min <= lo < -3.0


def test_mse_relu_beats_minmax(relu_data):
    s = TensorStats.from_values(relu_data)
    assert measured_mse(relu_data, *R.mse(s)) < measured_mse(relu_data, *R.minmax(s))


@pytest.mark.parametrize("method", list(R.METHODS))
def test_constant_and_zero_tensors(method):
    for value in (0.0, 3.5, -2.0):
        s = TensorStats.from_values(np.full(100, value, np.float32))
        lo, hi = R.compute_range(s, method)
        assert lo == hi == value
        enc = R.snpe_tf_encoding(lo, hi)
        assert enc.min <= min(value, 0) and enc.max >= max(value, 0)


def test_entropy_16_bit_falls_back_to_minmax(outlier_stats):
    assert R.entropy(outlier_stats, bitwidth=16) == R.minmax(outlier_stats)


def test_mse_on_a_full_4096_bin_histogram_beats_minmax():
    rng = np.random.default_rng(8)
    data = np.concatenate([rng.standard_normal(100_000), rng.uniform(-40, 60, 50)])
    s = TensorStats.from_values(data)
    assert s.counts.size > 2048
    lo, hi = R.mse(s)
    assert s.min <= lo < hi <= s.max and hi - lo < s.max - s.min  # it clips the outliers
    error = lambda enc: float(np.mean((R.dequantize(R.quantize(data, enc), enc) - data) ** 2))  # noqa: E731
    assert error(R.snpe_tf_encoding(lo, hi)) < error(R.snpe_tf_encoding(s.min, s.max))


# --------------------------------------------------------------------------
# internals against hand-worked cases and brute force
# --------------------------------------------------------------------------

def test_expected_sq_error_hand_worked():
    # centres (bin units) -1.5 -0.5 0.5 1.5 2.5 3.5 with counts 1 0 4 2 0 3
    h = R._ZeroHist(counts=np.array([1.0, 0, 4, 2, 0, 3]), z=2, width=1.0)
    t = R._MomentTables.build(h)
    # range [-1, 2] with 3 steps -> step 1: 6 inside * 1/12 + 1 * 0.5^2 + 3 * 1.5^2
    err = R._expected_sq_error(t, np.array(-1.0), np.array(2.0), 3)
    assert float(err) == pytest.approx(0.5 + 0.25 + 6.75)
    # no clipping: 10 values, step 5/3
    err = R._expected_sq_error(t, np.array(-1.5), np.array(3.5), 3)
    assert float(err) == pytest.approx(10 * (5 / 3) ** 2 / 12)


def test_kl_hand_worked():
    t = R._KLTables.build(np.array([2.0, 2.0, 4.0, 0.0]))
    kl = R._kl_divergence(t, np.array([0, 0]), np.array([4, 2]), levels=2)
    # [0, 4): Q reproduces P exactly (zero bin stays zero) -> 0
    # [0, 2): P = [2, 2 + 4 clipped] / 8, Q = [2, 2] / 4
    assert kl[0] == pytest.approx(0.0, abs=1e-12)
    assert kl[1] == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))


def _kl_reference(counts: np.ndarray, a: int, b: int, levels: int) -> float:
    """Direct TensorRT-style construction of P and Q (no prefix-sum algebra)."""
    p = counts[a:b].astype(np.float64).copy()
    p[0] += counts[:a].sum()
    p[-1] += counts[b:].sum()
    sliced = counts[a:b].astype(np.float64)
    q = np.zeros_like(p)
    bounds = [(j * (b - a)) // levels for j in range(levels + 1)]
    for g in range(levels):
        s, e = bounds[g], bounds[g + 1]
        nz = p[s:e] > 0
        if nz.any():
            q[s:e][nz] = sliced[s:e].sum() / nz.sum()
    p /= p.sum()
    if q.sum() == 0:
        return math.inf
    q /= q.sum()
    m = p > 0
    if np.any(q[m] == 0):
        return math.inf
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def test_kl_matches_direct_construction():
    rng = np.random.default_rng(12)
    counts = rng.poisson(np.exp(-np.linspace(-3, 3, 40) ** 2) * 50).astype(np.float64)
    counts[[0, 5, 39]] = [3, 0, 2]
    t = R._KLTables.build(counts)
    pairs = [(a, b) for a in range(0, 40, 3) for b in range(a + 4, 41, 2)]
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    fast = R._kl_divergence(t, a, b, levels=4)
    slow = np.array([_kl_reference(counts, *p, levels=4) for p in pairs])
    assert np.array_equal(np.isinf(fast), np.isinf(slow))
    np.testing.assert_allclose(fast[np.isfinite(slow)], slow[np.isfinite(slow)], rtol=1e-9, atol=1e-12)


def test_entropy_one_sided_is_exhaustive_optimum():
    rng = np.random.default_rng(13)
    x = np.concatenate([rng.exponential(1.0, 20_000), [30.0]])
    s = TensorStats.from_values(x, max_bins=64)
    lo, hi = R.entropy(s, bitwidth=3)  # 8 levels over <= 64 bins
    h = R._zero_hist(s, flatten_zero_spike=True)
    t = R._KLTables.build(h.counts)
    b = np.arange(8, h.nbins + 1)
    kl = R._kl_divergence(t, np.zeros_like(b), b, 8)
    assert hi == pytest.approx(min(float(h.edge(b[np.argmin(kl)])), s.max))
    assert lo == s.min


def test_mse_close_to_dense_optimum(outlier_stats):
    lo, hi = R.mse(outlier_stats)
    h = R._zero_hist(outlier_stats, flatten_zero_spike=True)
    t = R._MomentTables.build(h)
    w = h.width
    chosen = float(R._expected_sq_error(t, np.array(lo / w), np.array(hi / w), 255))
    grid_lo = np.linspace(outlier_stats.min, 0, 600) / w
    grid_hi = np.linspace(0, outlier_stats.max, 600) / w
    dense = R._expected_sq_error(t, grid_lo[:, None], grid_hi[None, :], 255).min()
    assert chosen <= dense * 1.001


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------

def test_registry_and_compute_encoding(outlier_stats):
    assert set(R.METHODS) == {"minmax", "percentile", "entropy", "mse"}
    with pytest.raises(ValueError, match="unknown range method"):
        R.compute_range(outlier_stats, "nope")
    lo, hi = R.compute_range(outlier_stats, "percentile", value=99.9)
    assert (lo, hi) == R.percentile(outlier_stats, 99.9)
    enc = R.compute_encoding(outlier_stats, "mse", bitwidth=8)
    assert enc == R.snpe_tf_encoding(*R.mse(outlier_stats, bitwidth=8), bitwidth=8)
    enc16 = R.compute_encoding(outlier_stats, "minmax", bitwidth=16)
    # the zero-point nudge may move an end by up to half a step
    assert enc16.bitwidth == 16 and enc16.min <= -40.0 + enc16.scale / 2


def test_mse_clips_the_negative_side_harder_when_its_errors_are_weighted_down():
    """A Conv output read by LeakyReLU(0.1): negative errors reach the output times 0.1 (weight 0.01)."""
    rng = np.random.default_rng(3)
    data = np.concatenate([rng.normal(0, 1, 50_000), -rng.exponential(8, 5_000)])
    s = TensorStats.from_values(data)
    plain_lo, plain_hi = R.mse(s)
    weighted_lo, weighted_hi = R.mse(s, negative_weight=0.01)
    assert weighted_lo > plain_lo  # less of the long negative side is kept
    assert weighted_hi >= plain_hi * 0.99
    # and it is the better range where the error matters: after the activation
    leaky = lambda x: np.where(x < 0, 0.1 * x, x)  # noqa: E731

    def error_after_activation(lo, hi):
        enc = R.snpe_tf_encoding(lo, hi)
        return float(np.mean((leaky(R.dequantize(R.quantize(data, enc), enc)) - leaky(data)) ** 2))

    assert error_after_activation(weighted_lo, weighted_hi) < error_after_activation(plain_lo, plain_hi)
    assert R.mse(s, negative_weight=1.0) == (plain_lo, plain_hi)
