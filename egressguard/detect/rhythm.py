"""Estimators of how regular a series of intervals or sizes is (RITA-style beacon scores), on numbers and arrays."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from egressguard.schema import Severity

NORMAL_MAD = 0.6745  # MAD = 0.6745 sd and IQR = 1.349 sd for a normal distribution
RITA_MIN_IQR = 10.0  # RITA: Bowley skew forced to 0 when Q3 - Q1 < 10 (seconds, bytes)
# RITA v5 default_config.hjson: beacon score thresholds base 50 / low 70 / medium 90 / high 100 % and long-connection
# thresholds 3600 / 14400 / 28800 / 43200 s, mapped to 0.2 / 0.4 / 0.6 / 0.8 by linear interpolation (config.go)
BEACON_BUCKETS = ((0.5, 0.2), (0.7, 0.4), (0.9, 0.6), (1.0, 0.8))
LONG_BUCKETS = ((3600.0, 0.2), (14400.0, 0.4), (28800.0, 0.6), (43200.0, 0.8))


@dataclass(frozen=True)
class Rhythm:
    """Robust summary of one series: median, MAD and Bowley skew (estimated), mean and standard deviation."""

    n: int
    median: float
    mad: float
    skew: float
    mean: float
    sd: float

    def cv(self) -> float:
        """Coefficient of variation (sd / mean), 0 for a series without a positive mean."""
        return self.sd / self.mean if self.mean > 0 else 0.0


def hist_quantiles(counts: np.ndarray, edges: np.ndarray, qs=(0.25, 0.5, 0.75)) -> list[float]:
    """Quantiles of values binned at log-spaced left edges (bin 0 below edges[0]), interpolated geometrically."""
    ratio = edges[1] / edges[0]
    lo = np.r_[edges[0] / ratio, edges]
    hi = np.r_[edges, edges[-1] * ratio]
    counts = counts.astype(np.float64)
    cum = np.cumsum(counts)
    out = []
    for q in qs:
        target = max(q * cum[-1], 1e-9)
        k = int(np.searchsorted(cum, target))
        frac = (target - (cum[k] - counts[k])) / counts[k]
        out.append(float(lo[k] * (hi[k] / lo[k]) ** frac))
    return out


def measure_rhythm(counts: np.ndarray | None, edges: np.ndarray, n: int, mean: float, m2: float) -> Rhythm:
    """A series' Rhythm from its histogram (None: none kept, the normal shape is assumed) and Welford state.

    Quantiles come from the histogram; when the values sit inside one or two bins the Welford mean and deviation
    are finer and are used instead (a normal shape).
    """
    sd = math.sqrt(max(m2, 0.0) / (n - 1)) if n > 1 else 0.0
    if counts is not None and counts.sum() > 0:
        q1, q2, q3 = hist_quantiles(counts, edges)
        if q3 - q1 <= 2 * NORMAL_MAD * sd:  # the histogram is the finer description
            iqr = q3 - q1
            skew = 0.0 if iqr < RITA_MIN_IQR or q2 in (q1, q3) else (q1 + q3 - 2 * q2) / iqr
            return Rhythm(n, q2, iqr / 2, skew, mean, sd)
    # the values sit inside a bin or two (the bins would spread them): the Welford moments are finer
    return Rhythm(n, mean, NORMAL_MAD * sd, 0.0, mean, sd)


def rita_part_score(r: Rhythm, default_below_one: float) -> float:
    """RITA's (skew score + MAD score) / 2; MAD score (median - MAD) / median, a default when the median is < 1."""
    mad_score = max(0.0, (r.median - r.mad) / r.median) if r.median >= 1 else default_below_one
    return (1 - abs(r.skew) + mad_score) / 2


def beacon_score(gaps: Rhythm, sizes: Rhythm, coverage: float) -> tuple[float, tuple[float, float, float, float]]:
    """RITA v5's beacon score (`activecm/rita` analysis/beacons.go), rounded to 3 places, and its four parts.

    timing = (1 - |Bowley skew| + MAD score) / 2 over the intervals, size = the same over the sizes, coverage as the
    caller measures it; RITA's fourth part, how evenly connections spread over the day's 24 hours, cannot be
    measured on captures of minutes, so it is replaced by the evenness of the intervals (1 - their CV).
    """
    parts = (rita_part_score(gaps, 1.0), rita_part_score(sizes, 0.0), coverage, max(0.0, 1 - gaps.cv()))
    return round(sum(parts) / 4, 3), parts


def rita_bucket(value: float, buckets) -> float:
    """RITA's linear interpolation of a value into its 0.2 / 0.4 / 0.6 / 0.8 buckets (0 below the base)."""
    if value < buckets[0][0]:
        return 0.0
    for (x0, y0), (x1, y1) in zip(buckets, buckets[1:]):
        if value < x1:
            return y0 + (y1 - y0) * (value - x0) / (x1 - x0)
    return buckets[-1][1]


def rita_severity(score: float) -> Severity:
    """RITA's severities: > 0.8 critical, >= 0.6 high, >= 0.4 medium, else low."""
    return Severity.CRITICAL if score > 0.8 else Severity.HIGH if score >= 0.6 else \
        Severity.MEDIUM if score >= 0.4 else Severity.LOW


def merge_welford(n0, mean0: float, m2_0: float, n, mean: float, m2: float) -> tuple:
    """(n, mean, M2) of two Welford states merged (Chan et al.); n0 + n must be positive."""
    total = n0 + n
    delta = mean - mean0
    return total, mean0 + delta * n / total, m2_0 + (m2 + delta ** 2 * n0 * n / total)


def merge_welford_rows(state: np.ndarray, n: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
    """Merge groups (n, mean, M2) into Welford states [rows, 3] (Chan et al.), in place."""
    n0, mean0, m20 = state[:, 0], state[:, 1], state[:, 2]
    total = n0 + n
    delta = mean - mean0
    safe = np.maximum(total, 1)
    state[:, 1] = np.where(total > 0, mean0 + delta * n / safe, 0.0)
    state[:, 2] = m20 + m2 + delta ** 2 * n0 * n / safe
    state[:, 0] = total


def merge_welford_groups(state: np.ndarray, slot: np.ndarray, x: np.ndarray) -> None:
    """Merge the values x of each slot group into the Welford states state[slot] (in place)."""
    if not len(slot):
        return
    uniq, inv = np.unique(slot, return_inverse=True)
    n = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    mean = np.bincount(inv, x, len(uniq)) / n
    m2 = np.bincount(inv, (x - mean[inv]) ** 2, len(uniq))
    part = state[uniq]
    merge_welford_rows(part, n, mean, m2)
    state[uniq] = part


def checkin_intervals(slot: np.ndarray, t: np.ndarray, prev_ns: np.ndarray, new_series: np.ndarray,
                      unit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check-ins among connection starts, and the intervals between them; starts in the same `unit` of time are one
    check-in, as RITA's unique (whole-second) timestamps.

    Args:
        slot: int64[n], the series of each start, sorted; t: int64[n], start times (ns), sorted within a series.
        prev_ns: int64[n], the latest check-in of each start's series before these; new_series: bool[n], the series
            had no start before these.
        unit: check-in granularity (ns).
    Returns:
        the starts that open a new series (bool[n]), the starts that are check-ins (int64 indices), the check-ins
        that end an interval (int64 indices) and those intervals (float64 s).
    """
    head = np.r_[True, slot[1:] != slot[:-1]]
    new_pair = head & new_series
    prev_unit = np.where(head, prev_ns // unit, np.r_[0, t[:-1] // unit])
    ci = np.flatnonzero(new_pair | (t // unit != prev_unit))
    first_ci = np.r_[True, slot[ci][1:] != slot[ci][:-1]]
    prev_t = np.where(first_ci, prev_ns[ci], np.r_[0, t[ci][:-1]])
    gap_s = (t[ci] - prev_t) / 1e9
    # the first start of a series has no interval; one older than the series' latest (flows end out of order
    # across batches) adds none either
    interval = ~new_pair[ci] & (gap_s > 0)
    return new_pair, ci, ci[interval], gap_s[interval]


def bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram bin of each value, given the bins' left edges (bin 0 below edges[0])."""
    return np.searchsorted(edges, values, side="right")


def add_to_histograms(hist: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """hist[rows, cols] += 1 for every pair (repeats counted), faster than np.add.at."""
    if len(rows):
        idx, cnt = np.unique(rows * hist.shape[1] + cols, return_counts=True)
        hist.ravel()[idx] += cnt.astype(hist.dtype)
