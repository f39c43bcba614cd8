#!/usr/bin/env python3
"""Anomaly-free synthetic metric series for false-alarm rates (no labels: every alarm is false).

Writes six NAB-format CSVs (`timestamp,value`, 8,000 rows each, seeded) into OUT_DIR: what
production metrics look like beyond NAB's development series, each without an anomaly:

  gaussian_daily   5-minute samples, a daily cycle and normal noise
  irregular_daily  a daily cycle sampled at exponential intervals (mean 5 minutes) with a few
                   gaps of hours, values rounded to 0.1
  lognormal        heavy-tailed values (lognormal, sigma 1)
  poisson_daily    low counts (Poisson, mean 1-9) with a daily cycle
  random_walk      a level that wanders (Gaussian random walk)
  tweets_like      overdispersed counts with a daily cycle (Poisson of a lognormal rate)

Usage: scripts/null_series.py OUT_DIR  (numpy and pandas: the scorer's venv,
${VIGIL_CACHE:-~/.cache/vigil}/venv/bin/python, has both). Score each file with
`vigil score ... --input OUT_DIR/F.csv` and count the rows at or above the threshold after the
first 750 (NAB's probation); docs/quality.md reports the counts for the recommended rules.
"""
import os
import sys

import numpy as np
import pandas as pd


def main(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(42)
    n = 8000
    t0 = pd.Timestamp("2015-01-01")

    def save(name, ts, values):
        pd.DataFrame({"timestamp": [t.strftime("%Y-%m-%d %H:%M:%S") for t in ts],
                      "value": values}).to_csv(os.path.join(out, f"{name}.csv"), index=False)

    ts = [t0 + pd.Timedelta(minutes=5 * i) for i in range(n)]
    day = np.sin(2 * np.pi * (np.arange(n) % 288) / 288)
    save("poisson_daily", ts, rng.poisson(5 + 4 * day))
    save("lognormal", ts, np.round(np.exp(rng.normal(3, 1, n)), 2))
    save("tweets_like", ts, rng.poisson(np.exp(2.5 + 0.8 * day + rng.normal(0, 0.5, n))))
    save("random_walk", ts, np.round(np.cumsum(rng.normal(0, 0.2, n)) + 50, 3))
    gaps = rng.exponential(300, n)
    gaps[rng.random(n) < 0.002] *= 100
    its = [t0 + pd.Timedelta(seconds=float(s)) for s in np.cumsum(gaps)]
    its_day = np.array([np.sin(2 * np.pi * (t.hour * 60 + t.minute) / 1440) for t in its])
    save("irregular_daily", its, np.round(60 + 10 * its_day + rng.normal(0, 3, n), 1))
    save("gaussian_daily", ts, 100 + 20 * day + rng.normal(0, 5, n))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
