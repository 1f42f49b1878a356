"""Turning tensor statistics into quantization ranges and SNPE/QNN encodings.

Two layers:

* Range methods (:data:`METHODS`) take a :class:`~qcal.stats.TensorStats` and
  return a clipping range ``(lo, hi)`` *before* the SNPE nudge. Every method
  returns a range inside the observed ``[min, max]``.
* :func:`snpe_tf_encoding` turns ``(lo, hi)`` into an :class:`Encoding` the way
  SNPE/QNN's 'tf' mode does (range widened to include 0, minimum range, 0.0
  exactly representable).

QNN conventions used throughout
-------------------------------
``float = (q + offset) * scale`` with ``offset <= 0`` an integer (``-offset``
is the zero point). Unsigned storage: ``q in [0, 2**bw - 1]``. Signed
storage (symmetric weights): ``q in [-2**(bw-1), 2**(bw-1) - 1]`` with
``offset == 0``. Rounding is half away from zero, as C++ ``std::round`` in
SNPE/AIMET.

Asymmetric (signed) data
------------------------
``percentile`` clips each tail at its own percentile. ``entropy`` and ``mse``
work on a histogram re-binned so that 0 is a bin edge inside it (the
encoding always contains 0) and search the lower and upper clipping points
*jointly*, on the quantization grid the encoding will really use: one
uniform grid of ``2**bw`` levels over ``[lo, hi]``. (Searching each side
separately would be wrong: shrinking one side only refines the shared grid a
little.) When the data are one-sided (e.g. post-ReLU, ``min >= 0``) the
bound on the empty side stays at 0 and only the other side is searched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from qcal.stats import TensorStats

__all__ = [
    "Encoding",
    "snpe_tf_encoding",
    "symmetric_encoding",
    "quantize",
    "dequantize",
    "minmax",
    "percentile",
    "entropy",
    "mse",
    "METHODS",
    "compute_range",
    "compute_encoding",
]

DEFAULT_MIN_RANGE = 1e-4  # SNPE/AIMET MIN_RANGE

# snpe_tf_encoding's parameters are named min/max as in the SNPE docs, which
# shadows the builtins there; these aliases keep them reachable.
_builtin_min, _builtin_max = min, max


# --------------------------------------------------------------------------
# Encodings
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoding:
    """A linear quantization encoding in QNN form: ``float = (q + offset) * scale``."""

    min: float
    max: float
    scale: float
    offset: int
    bitwidth: int
    signed: bool = False  # storage type of q, see module docstring

    @property
    def qmin(self) -> int:
        return -(1 << (self.bitwidth - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bitwidth - 1)) - 1 if self.signed else (1 << self.bitwidth) - 1


def _round_half_away(x: np.ndarray | float) -> np.ndarray:
    # std::round semantics; numpy's round is half-to-even.
    return np.copysign(np.floor(np.abs(x) + 0.5), x)


def _check_bitwidth(bitwidth: int) -> None:
    if not 2 <= int(bitwidth) <= 32:
        raise ValueError(f"bitwidth must be in [2, 32], got {bitwidth}")


def snpe_tf_encoding(
    min: float, max: float, bitwidth: int = 8, min_range: float = DEFAULT_MIN_RANGE
) -> Encoding:
    """SNPE/QNN 'tf' asymmetric encoding of the range ``[min, max]``.

    1. widen to include 0 (0 must be exact: zero padding, ReLU);
    2. enforce ``max - min >= min_range`` by raising max (also avoids scale 0);
    3. ``scale = (max - min) / (2**bw - 1)``, ``offset = round(min / scale)``
       and ``min = offset * scale``, ``max = min + (2**bw - 1) * scale`` so that
       0.0 is exactly the level ``q = -offset``.
    """
    _check_bitwidth(bitwidth)
    lo, hi = float(min), float(max)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"invalid range [{lo}, {hi}]")
    lo, hi = _builtin_min(lo, 0.0), _builtin_max(hi, 0.0)
    hi = _builtin_max(hi, lo + min_range)
    steps = (1 << bitwidth) - 1
    scale = (hi - lo) / steps
    # Clamped "just to be safe" like AIMET: rounding cannot push 0 off the grid.
    offset = int(np.clip(_round_half_away(lo / scale), -steps, 0))
    enc_min = offset * scale
    return Encoding(min=enc_min, max=enc_min + steps * scale, scale=scale, offset=offset, bitwidth=bitwidth)


def symmetric_encoding(
    absmax: float, bitwidth: int = 8, signed: bool = True, min_range: float = DEFAULT_MIN_RANGE
) -> Encoding:
    """Symmetric encoding for weights (QNN/AIMET convention).

    ``scale = absmax / (2**(bw-1) - 1)``; the grid is
    ``[-2**(bw-1), 2**(bw-1) - 1] * scale``, i.e. one extra negative level
    (min = -128/127 * absmax for 8 bits), as AIMET's non-strict symmetric mode.
    ``signed=True``: q stored as int (offset 0). ``signed=False``: q stored as
    uint with ``offset = -2**(bw-1)``. Both describe the same float grid.
    """
    _check_bitwidth(bitwidth)
    absmax = abs(float(absmax))
    if not math.isfinite(absmax):
        raise ValueError(f"invalid absmax {absmax}")
    absmax = max(absmax, min_range / 2)
    half = 1 << (bitwidth - 1)
    scale = absmax / (half - 1)
    return Encoding(
        min=-half * scale,
        max=(half - 1) * scale,
        scale=scale,
        offset=0 if signed else -half,
        bitwidth=bitwidth,
        signed=signed,
    )


def quantize(x: np.ndarray | float, enc: Encoding) -> np.ndarray:
    """``q = clip(round(x / scale) - offset, qmin, qmax)`` as int64."""
    q = _round_half_away(np.asarray(x, dtype=np.float64) / enc.scale) - enc.offset
    return np.clip(q, enc.qmin, enc.qmax).astype(np.int64)


def dequantize(q: np.ndarray | int, enc: Encoding) -> np.ndarray:
    """``float = (q + offset) * scale`` (float64)."""
    return (np.asarray(q, dtype=np.float64) + enc.offset) * enc.scale


# --------------------------------------------------------------------------
# Histogram helpers
# --------------------------------------------------------------------------

def _require_data(stats: TensorStats) -> None:
    if stats.empty:
        raise ValueError(
            "no finite values observed for this tensor"
            + (f" ({stats.nonfinite_count} non-finite)" if stats.nonfinite_count else "")
        )


@dataclass(frozen=True)
class _ZeroHist:
    """Histogram with 0 as the edge at index ``z``; positions are in bin units.

    Edge ``j`` lies at ``(j - z) * width``; after re-binning to include 0 the
    whole histogram fits in max_bins bins, so these are small integers.
    """

    counts: np.ndarray  # float64
    z: int
    width: float

    @property
    def nbins(self) -> int:
        return self.counts.size

    def edge(self, j: int | np.ndarray) -> np.ndarray:
        return (np.asarray(j, dtype=np.float64) - self.z) * self.width


def _zero_hist(stats: TensorStats, flatten_zero_spike: bool = False) -> _ZeroHist:
    """The histogram of ``stats`` re-binned to contain 0 as an edge.

    ``flatten_zero_spike`` replaces the count of the ``[0, w)`` bin by its
    neighbour's. Exact zeros (post-ReLU: often half the values) are exactly
    representable after the SNPE nudge, so they carry no quantization error;
    left in, their spike dominates both the KL and the MSE objective and
    drives them to clip far too much. TensorRT's calibrator does the same
    (``bins[0] = bins[1]`` on its |x| histogram). For smooth data the bin
    already has about its neighbour's count, so this changes little.
    """
    k, origin, counts = stats.rebinned(0.0, 0.0)
    h = _ZeroHist(counts=counts.astype(np.float64), z=-origin, width=math.ldexp(1.0, k))
    if flatten_zero_spike and h.nbins > 1:
        neighbour = h.z + 1 if h.z + 1 < h.nbins else h.z - 1
        h.counts[h.z] = min(h.counts[h.z], h.counts[neighbour])
    return h


def _clamp_to_data(stats: TensorStats, lo: float, hi: float) -> tuple[float, float]:
    # Search grids extend to bin edges and to 0; report only what was observed.
    lo = min(max(lo, stats.min), stats.max)
    hi = max(min(hi, stats.max), lo)
    return float(lo), float(hi)


# --------------------------------------------------------------------------
# minmax
# --------------------------------------------------------------------------

def minmax(stats: TensorStats, bitwidth: int = 8) -> tuple[float, float]:
    """Observed range. ``bitwidth`` is accepted for a uniform signature."""
    _require_data(stats)
    return float(stats.min), float(stats.max)


# --------------------------------------------------------------------------
# percentile
# --------------------------------------------------------------------------

def _histogram_quantile(stats: TensorStats, q: float) -> float:
    """``np.percentile(data, 100 q)`` (its default 'linear' method) from the histogram.

    numpy interpolates between the order statistics ``floor(r)`` and
    ``ceil(r)``, ``r = q (N - 1)``. Each order statistic's bin is known
    exactly from the cumulative counts; within the bin we place it as if the
    bin's values were spread evenly. Each estimate is then within one bin
    width of the true order statistic, and so is their interpolation.
    """
    if q <= 0.0:
        return float(stats.min)
    if q >= 1.0:
        return float(stats.max)
    rank = q * (stats.count - 1)
    j0 = math.floor(rank)
    j1 = min(j0 + 1, stats.count - 1)
    cum = np.cumsum(stats.counts)
    edges = stats.bin_edges()

    def order_statistic(j: int) -> float:
        i = int(np.searchsorted(cum, j, side="right"))  # first bin with cum > j
        before = float(cum[i - 1]) if i else 0.0
        frac = (j - before + 0.5) / float(stats.counts[i])
        value = edges[i] + frac * (edges[i + 1] - edges[i])
        return float(np.clip(value, stats.min, stats.max))

    x0, x1 = order_statistic(j0), order_statistic(j1)
    return x0 + (rank - j0) * (x1 - x0)


def percentile(
    stats: TensorStats, value: float = 99.99, bitwidth: int = 8, split_tails: bool = False
) -> tuple[float, float]:
    """Clip each tail at a percentile: ``lo = P(100 - value)``, ``hi = P(value)``.

    This is AIMET/qairt's form (each tail loses ``100 - value`` percent; for
    one-sided data the lower cut lands at ~min and the encoding's widening
    to 0 makes it irrelevant). ``split_tails=True`` gives ONNX Runtime's
    non-symmetric form instead, where the two tails together lose
    ``100 - value`` percent (``(100 - value) / 2`` each). ``bitwidth`` is
    accepted for a uniform signature.
    """
    _require_data(stats)
    if not 50.0 <= value <= 100.0:
        raise ValueError(f"percentile value must be in [50, 100], got {value}")
    tail = (100.0 - value) / 100.0
    if split_tails:
        tail /= 2.0
    return _histogram_quantile(stats, tail), _histogram_quantile(stats, 1.0 - tail)


# --------------------------------------------------------------------------
# entropy (KL divergence)
# --------------------------------------------------------------------------

def _xlogx(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x * np.log(np.where(x > 0, x, 1.0))


@dataclass(frozen=True)
class _KLTables:
    """Prefix sums that make KL(P||Q) of any candidate O(levels) to evaluate."""

    n: np.ndarray    # counts per bin
    c0: np.ndarray   # prefix sums of counts (length nbins + 1)
    cz: np.ndarray   # prefix counts of non-empty bins
    c1: np.ndarray   # prefix sums of n log n
    total: float

    @classmethod
    def build(cls, counts: np.ndarray) -> _KLTables:
        pad = lambda a: np.concatenate([[0.0], np.cumsum(a, dtype=np.float64)])  # noqa: E731
        return cls(n=counts, c0=pad(counts), cz=pad(counts > 0), c1=pad(_xlogx(counts)), total=float(counts.sum()))


def _kl_divergence(t: _KLTables, a: np.ndarray, b: np.ndarray, levels: int) -> np.ndarray:
    """KL(P||Q) for clipping to bins ``[a, b)`` (arrays of candidates), as TensorRT.

    P is the histogram restricted to ``[a, b)`` with the clipped mass added
    to the edge bins; Q quantizes the in-range histogram into ``levels``
    equal groups of bins and spreads each group's mass uniformly over the
    group's bins where P is non-zero. With prefix sums this is exactly

        KL = (sum P log P - sum_g PG_g log(S_g / Z_g)) / N + log(M / N)

    where S_g is a group's in-range count, PG_g the same plus clipped mass,
    Z_g its non-empty bins, M the in-range count and N the total. A candidate
    is infinite when P has mass where Q has none (a group whose only mass is
    clipped outliers); TensorRT smooths that case, we simply reject it.
    Requires ``b - a >= levels`` so that every group has a bin.
    """
    g = a[:, None] + (np.arange(levels + 1)[None, :] * (b - a)[:, None]) // levels
    s = np.diff(t.c0[g], axis=1)
    z = np.diff(t.cz[g], axis=1)
    left, right = t.c0[a], t.total - t.c0[b]
    n_first, n_last = t.n[a], t.n[b - 1]
    # Clipped mass makes an empty edge bin non-empty in P.
    z[:, 0] += (n_first == 0) & (left > 0)
    z[:, -1] += (n_last == 0) & (right > 0)
    pg = s.copy()
    pg[:, 0] += left
    pg[:, -1] += right

    plogp = (t.c1[b] - t.c1[a] - _xlogx(n_first) - _xlogx(n_last)
             + _xlogx(n_first + left) + _xlogx(n_last + right))
    ok = s > 0
    log_q = np.log(np.where(ok, s, 1.0) / np.where(ok, z, 1.0))
    cross = np.sum(np.where(ok, pg * log_q, 0.0), axis=1)
    inside = t.c0[b] - t.c0[a]
    with np.errstate(divide="ignore"):
        kl = (plogp - cross) / t.total + np.log(inside / t.total)
    kl[np.any((pg > 0) & ~ok, axis=1) | (inside <= 0)] = np.inf
    return kl


def _best_kl(t: _KLTables, a: np.ndarray, b: np.ndarray, levels: int) -> tuple[int, int, float]:
    """Minimum-KL candidate among pairs (a[i], b[i]); evaluated in memory-bounded chunks."""
    keep = b - a >= levels
    a, b = a[keep], b[keep]
    best = (-1, -1, math.inf)
    chunk = max(1, (1 << 20) // (levels + 1))
    for i in range(0, a.size, chunk):
        kl = _kl_divergence(t, a[i:i + chunk], b[i:i + chunk], levels)
        j = int(np.argmin(kl))
        if kl[j] < best[2]:
            best = (int(a[i + j]), int(b[i + j]), float(kl[j]))
    return best


def entropy(stats: TensorStats, bitwidth: int = 8, coarse_grid: int = 32, max_rounds: int = 8) -> tuple[float, float]:
    """TensorRT-style KL-divergence calibration on the asymmetric grid.

    Candidates are clipping ranges ``[a, b)`` in bins with ``a <= zero <= b``
    (the encoding always contains 0) and at least ``2**bw`` bins. Because the
    encoding is one uniform grid over ``[lo, hi]``, both ends matter jointly
    (shrinking only one side barely refines the grid), so the search is:

    1. a coarse joint grid of ``coarse_grid**2`` (a, b) pairs, then
    2. alternating exhaustive 1-D searches (all b for the best a, all a for
       the best b) until the pair stops changing.

    One-sided data (``min >= 0`` or ``max <= 0``) have a single possible
    value on the empty side, so step 2 is an exhaustive search: the global
    KL optimum, as in TensorRT. If the histogram has fewer bins than levels
    (e.g. 16-bit, or an almost constant tensor) no clipping can be judged
    and the observed range is returned.
    """
    _require_data(stats)
    _check_bitwidth(bitwidth)
    levels = 1 << bitwidth
    h = _zero_hist(stats, flatten_zero_spike=True)
    if h.nbins < levels:
        return minmax(stats)
    t = _KLTables.build(h.counts)

    # Lower ends a in [0, z], upper ends b in [z, nbins]; a single candidate
    # on a side means one-sided data.
    a_all = np.arange(0, h.z + 1)  # min >= 0 gives z == 0: a single candidate
    b_all = np.arange(h.z, h.nbins + 1)
    if stats.max <= 0:
        # Mirror of the min >= 0 case. The histogram always ends with the
        # [0, w) bin; keeping it costs at most one empty bin of the grid.
        b_all = b_all[-1:]
    a, b = 0, h.nbins  # no clipping: always a valid (finite-KL) candidate
    if a_all.size > 1 and b_all.size > 1:
        a_grid = np.unique(np.linspace(0, h.z, coarse_grid).round().astype(np.int64))
        b_grid = np.unique(np.linspace(h.z, h.nbins, coarse_grid).round().astype(np.int64))
        aa, bb = np.meshgrid(a_grid, b_grid, indexing="ij")
        a, b, _ = _best_kl(t, np.append(aa.ravel(), a), np.append(bb.ravel(), b), levels)
    for _ in range(max_rounds):
        prev = (a, b)
        if b_all.size > 1:
            _, b, _ = _best_kl(t, np.full_like(b_all, a), b_all, levels)
        if a_all.size > 1:
            a, _, _ = _best_kl(t, a_all, np.full_like(a_all, b), levels)
        if (a, b) == prev or a_all.size == 1 or b_all.size == 1:
            break
    return _clamp_to_data(stats, float(h.edge(a)), float(h.edge(b)))


# --------------------------------------------------------------------------
# mse
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class _MomentTables:
    """Prefix (below) and suffix (above) moment sums over bin centres, in bin units.

    Suffix sums are accumulated from the top so that small tails (a few
    outliers) are not lost to cancellation against the bulk.
    """

    centres: np.ndarray
    below: tuple[np.ndarray, np.ndarray, np.ndarray]  # sum_{j < i} n u^p, p = 0, 1, 2
    above: tuple[np.ndarray, np.ndarray, np.ndarray]  # sum_{j >= i} n u^p
    total: float

    @classmethod
    def build(cls, h: _ZeroHist, negative_weight: float = 1.0) -> _MomentTables:
        u = np.arange(h.nbins, dtype=np.float64) - h.z + 0.5
        counts = np.where(u < 0, h.counts * negative_weight, h.counts)
        moments = [counts, counts * u, counts * u * u]
        below = tuple(np.concatenate([[0.0], np.cumsum(m)]) for m in moments)
        above = tuple(np.concatenate([np.cumsum(m[::-1])[::-1], [0.0]]) for m in moments)
        return cls(centres=u, below=below, above=above, total=float(counts.sum()))


def _expected_sq_error(t: _MomentTables, lo: np.ndarray, hi: np.ndarray, steps: int) -> np.ndarray:
    """Expected total squared error (bin units^2) of quantizing to ``[lo, hi]`` (broadcast).

    Values whose bin centre is inside the range get uniform rounding noise
    ``step^2 / 12``; values outside are clipped to the nearest end and cost
    ``(centre - end)^2``.
    """
    i_lo = np.searchsorted(t.centres, lo, side="left")   # bins [0, i_lo) are below lo
    i_hi = np.searchsorted(t.centres, hi, side="right")  # bins [i_hi, n) are above hi
    b0, b1, b2 = (m[i_lo] for m in t.below)
    a0, a1, a2 = (m[i_hi] for m in t.above)
    clip_lo = np.maximum(b2 - 2 * lo * b1 + lo * lo * b0, 0.0)
    clip_hi = np.maximum(a2 - 2 * hi * a1 + hi * hi * a0, 0.0)
    inside = t.total - b0 - a0
    step = (hi - lo) / steps
    return inside * step * step / 12.0 + clip_lo + clip_hi


def _side_candidates(extent: float, lo_frac: float, hi_frac: float, n: int, geometric: bool) -> np.ndarray:
    """Candidate end points ``extent * f`` for shrink factors f in [lo_frac, hi_frac]."""
    if extent == 0.0:
        return np.zeros(1)
    space = np.geomspace if geometric else np.linspace
    return extent * space(lo_frac, hi_frac, n)


def mse(stats: TensorStats, bitwidth: int = 8, grid: int = 128, refine: int = 2,
        negative_weight: float = 1.0) -> tuple[float, float]:
    """Range minimising the expected squared quantization error (SNPE 'enhanced' / AIMET idea).

    ``negative_weight`` scales the error of negative values: for a Conv output read only by a
    LeakyReLU(alpha), an error e on a negative value reaches the layer's output as alpha * e, so its
    weight is alpha^2 and the long negative side of such pre-activations may be clipped harder
    (measured on YOLOv3-tiny, 159 photos, 3 folds: objectness SQNR +1.3 dB, pooled mAP50 agreement on
    unseen photos 0.964 -> 0.987, paired 90% interval of the gain [-0.008, +0.050]).

    The error model is :func:`_expected_sq_error` on the histogram (bin
    centres). Candidates form a joint ``grid x grid`` grid of shrink factors
    ``(f_lo, f_hi)`` applied to ``min(min, 0)`` and ``max(max, 0)``, so the
    range always contains 0 as the encoding will; for one-sided data the
    empty side stays at 0. The first grid is geometric from one bin to the
    full extent (a huge outlier can make the best range a tiny fraction of
    minmax); it is then refined ``refine`` times with ``grid`` linear points
    between the best candidate's neighbours, which resolves the optimum to
    well below a bin.
    """
    _require_data(stats)
    _check_bitwidth(bitwidth)
    steps = (1 << bitwidth) - 1
    h = _zero_hist(stats, flatten_zero_spike=True)
    t = _MomentTables.build(h, negative_weight)
    lo_ext = min(stats.min, 0.0) / h.width
    hi_ext = max(stats.max, 0.0) / h.width
    if lo_ext == hi_ext:  # all zeros
        return minmax(stats)

    # Smallest shrink factor: one bin (the histogram cannot resolve less).
    f_lo = (min(1.0, 1.0 / abs(lo_ext)) if lo_ext else 1.0, 1.0)
    f_hi = (min(1.0, 1.0 / abs(hi_ext)) if hi_ext else 1.0, 1.0)
    best_lo, best_hi = lo_ext, hi_ext
    for round_ in range(refine + 1):
        lo_c = _side_candidates(lo_ext, *f_lo, grid, geometric=round_ == 0)
        hi_c = _side_candidates(hi_ext, *f_hi, grid, geometric=round_ == 0)
        err = _expected_sq_error(t, lo_c[:, None], hi_c[None, :], steps)
        i, j = np.unravel_index(int(np.argmin(err)), err.shape)
        best_lo, best_hi = float(lo_c[i]), float(hi_c[j])
        f_lo = _neighbourhood(lo_c, i, lo_ext)
        f_hi = _neighbourhood(hi_c, j, hi_ext)
    return _clamp_to_data(stats, best_lo * h.width, best_hi * h.width)


def _neighbourhood(cands: np.ndarray, i: int, extent: float) -> tuple[float, float]:
    """Shrink-factor interval between the neighbours of candidate ``i``."""
    if extent == 0.0:
        return (1.0, 1.0)
    lo = cands[max(i - 1, 0)] / extent
    hi = cands[min(i + 1, cands.size - 1)] / extent
    return (float(min(lo, hi)), float(max(lo, hi)))


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------

RangeMethod = Callable[..., tuple[float, float]]

METHODS: dict[str, RangeMethod] = {
    "minmax": minmax,
    "percentile": percentile,
    "entropy": entropy,
    "mse": mse,
}


def compute_range(stats: TensorStats, method: str, **options) -> tuple[float, float]:
    """Clipping range ``(lo, hi)`` of ``stats`` by the named method (see :data:`METHODS`)."""
    try:
        fn = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown range method {method!r}; choose from {sorted(METHODS)}") from None
    return fn(stats, **options)


def compute_encoding(
    stats: TensorStats,
    method: str = "minmax",
    bitwidth: int = 8,
    min_range: float = DEFAULT_MIN_RANGE,
    **options,
) -> Encoding:
    """``snpe_tf_encoding(*compute_range(stats, method, ...))`` for an activation tensor."""
    lo, hi = compute_range(stats, method, bitwidth=bitwidth, **options)
    return snpe_tf_encoding(lo, hi, bitwidth=bitwidth, min_range=min_range)
