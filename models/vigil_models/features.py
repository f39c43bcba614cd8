"""Window features of a NAB series, computed exactly as the Vigil detector computes them.

Owns: reading a NAB CSV, assigning events to event-time windows, and the 11 per-window aggregates of
the `value` field (names `value.<feature>`, order `FEATURES`). The detector (Rust) is the reference;
this module mirrors it so that models trained here see the features they will be served.

Definitions (see vigil-api `Feature`):
  count, sum, mean, min, max, stddev (population, Welford), last (value of the event with the
  greatest event time; ties go to the later event in file order), rate (count / window size in
  seconds), p50/p95/p99 (DDSketch with the `sketches-ddsketch` crate's default configuration:
  relative accuracy 1%, 2048 bins, min indexable value 1e-9).
Windows: start = ts - ts % slide (epoch-aligned, UTC seconds); a window covers [start, start + size).
NAB timestamps carry no zone; they are read as UTC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = [
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "stddev",
    "last",
    "rate",
    "p50",
    "p95",
    "p99",
]
FIELD = "value"
FEATURE_NAMES = [f"{FIELD}.{f}" for f in FEATURES]


@dataclass(frozen=True)
class Window:
    """A window tier: `size_secs` long, a new window every `slide_secs` (tumbling when equal)."""

    tier: str
    size_secs: int
    slide_secs: int

    @property
    def kind(self) -> str:
        return "tumbling" if self.size_secs == self.slide_secs else "hopping"


# The tier the reference models are trained on: NAB series are sampled every 5 min, 30 min or 1 h,
# so one hour is the smallest window every series fills; tumbling keeps rows independent.
ANALYSIS = Window(tier="analysis", size_secs=3600, slide_secs=3600)


class DDSketchQuantile:
    """Quantiles as `sketches_ddsketch::DDSketch::quantile` returns them (no bin collapsing: the
    2048-bin limit needs a max/min ratio above 1.0202^2048, about e^41, which windows never reach)."""

    ALPHA = 0.01
    MIN_VALUE = 1.0e-9

    def __init__(self) -> None:
        self.gamma = (1.0 + self.ALPHA) / (1.0 - self.ALPHA)
        self.gamma_ln = math.log(self.gamma)

    def _value(self, v: float) -> float:
        key = math.floor(math.log(v) / self.gamma_ln)
        return math.exp(key * self.gamma_ln) * (2.0 * self.gamma / (1.0 + self.gamma))

    def quantile(self, sorted_values: np.ndarray, q: float) -> float:
        n = len(sorted_values)
        if q == 0.0:
            return float(sorted_values[0])
        if q == 1.0:
            return float(sorted_values[-1])
        rank = int(q * (n - 1.0))
        v = float(sorted_values[rank])
        if v > self.MIN_VALUE:
            return self._value(v)
        if v < -self.MIN_VALUE:
            return -self._value(-v)
        return 0.0


_SKETCH = DDSketchQuantile()


def read_nab(path: Path) -> pd.DataFrame:
    """A NAB CSV as columns `ts` (epoch seconds, int64) and `value` (float64), in file order."""
    df = pd.read_csv(path)
    ts = pd.to_datetime(df["timestamp"], format="%Y-%m-%d %H:%M:%S")
    secs = (ts - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    return pd.DataFrame({"ts": secs.astype("int64"), "value": df["value"].astype("float64")})


def _aggregate(values: np.ndarray, ts: np.ndarray, size_secs: int) -> list[float]:
    n = len(values)
    # Welford's online mean and population variance, in event order, as the detector does.
    mean = 0.0
    m2 = 0.0
    total = 0.0
    for i, x in enumerate(values, start=1):
        total += x
        delta = x - mean
        mean += delta / i
        m2 += delta * (x - mean)
    stddev = math.sqrt(m2 / n)
    # Last by event time; among equal times the later event in arrival order wins.
    last_idx = int(np.flatnonzero(ts == ts.max())[-1])
    s = np.sort(values)
    return [
        float(n),
        total,
        mean,
        float(s[0]),
        float(s[-1]),
        stddev,
        float(values[last_idx]),
        n / size_secs,
        _SKETCH.quantile(s, 0.50),
        _SKETCH.quantile(s, 0.95),
        _SKETCH.quantile(s, 0.99),
    ]


def window_features(df: pd.DataFrame, window: Window = ANALYSIS) -> tuple[np.ndarray, np.ndarray]:
    """Features of every non-empty window of one series.

    Returns (starts, X): `starts` int64 [W] window starts in epoch seconds, ascending; `X` float64
    [W, 11] in `FEATURE_NAMES` order. Each event joins every window whose [start, start+size)
    contains its timestamp (one window when tumbling).
    """
    ts = df["ts"].to_numpy()
    values = df["value"].to_numpy()
    per_window: dict[int, list[int]] = {}
    hops = window.size_secs // window.slide_secs
    for i, t in enumerate(ts):
        last_start = int(t) - int(t) % window.slide_secs
        for h in range(hops):
            start = last_start - h * window.slide_secs
            if start <= t < start + window.size_secs:
                per_window.setdefault(start, []).append(i)
    starts = np.array(sorted(per_window), dtype=np.int64)
    X = np.array(
        [
            _aggregate(values[per_window[s]], ts[per_window[s]], window.size_secs)
            for s in starts
        ],
        dtype=np.float64,
    )
    return starts, X


def sequences(X: np.ndarray, starts: np.ndarray, lookback: int, slide_secs: int) -> np.ndarray:
    """Rolling sequences of `lookback` consecutive windows, [S, lookback, F].

    A sequence is only formed from windows that are consecutive in time (no missing window), so a
    gap in a series never glues unrelated windows together.
    """
    out = []
    for end in range(lookback - 1, len(X)):
        span = starts[end] - starts[end - lookback + 1]
        if span == (lookback - 1) * slide_secs:
            out.append(X[end - lookback + 1 : end + 1])
    if not out:
        return np.zeros((0, lookback, X.shape[1]))
    return np.stack(out)
