//! Incremental aggregates of one numeric field over a pane or window, and the feature values
//! computed from them. Aggregates merge, so a hopping window is the merge of its panes.

use sketches_ddsketch::{Config as SketchConfig, DDSketch};
use vigil_api::v1alpha1::Feature;

/// Relative accuracy of the quantile sketch: p50/p95/p99 are within 1% of the true quantile
/// (DDSketch guarantee, Masson et al., VLDB 2019).
pub const SKETCH_RELATIVE_ACCURACY: f64 = 0.01;

fn sketch_config() -> SketchConfig {
    // 2048 bins is the crate default; min value 1e-9 as in the crate default.
    SketchConfig::new(SKETCH_RELATIVE_ACCURACY, 2048, 1.0e-9)
}

/// Aggregate of the values of one field: count, sum, Welford mean and M2, extremes, the value
/// with the greatest event time, and optionally a DDSketch for quantiles.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Agg {
    count: u64,
    sum: f64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    last_time: i64,
    last: f64,
    sketch: Option<Box<DDSketch>>,
}

impl std::fmt::Debug for Agg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agg")
            .field("count", &self.count)
            .field("mean", &self.mean)
            .field("sketch", &self.sketch.is_some())
            .finish_non_exhaustive()
    }
}

impl Agg {
    /// An empty aggregate; `with_sketch` enables p50/p95/p99.
    pub fn new(with_sketch: bool) -> Self {
        Self {
            count: 0,
            sum: 0.0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last_time: i64::MIN,
            last: f64::NAN,
            sketch: with_sketch.then(|| Box::new(DDSketch::new(sketch_config()))),
        }
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds a value observed at event time `t` (ms). Non-finite values are ignored.
    pub fn add(&mut self, t: i64, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.count += 1;
        self.sum += v;
        let delta = v - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (v - self.mean);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        // Ties on event time keep the later arrival.
        if t >= self.last_time {
            self.last_time = t;
            self.last = v;
        }
        if let Some(s) = &mut self.sketch {
            s.add(v);
        }
    }

    /// Merges another aggregate (Chan, Golub & LeVeque 1979 for mean and M2).
    pub fn merge(&mut self, o: &Agg) {
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            let sketch = self.sketch.take();
            *self = o.clone();
            if sketch.is_none() {
                self.sketch = None;
            }
            return;
        }
        let n = (self.count + o.count) as f64;
        let delta = o.mean - self.mean;
        self.m2 += o.m2 + delta * delta * self.count as f64 * o.count as f64 / n;
        self.mean += delta * o.count as f64 / n;
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if o.last_time >= self.last_time {
            self.last_time = o.last_time;
            self.last = o.last;
        }
        if let (Some(a), Some(b)) = (&mut self.sketch, &o.sketch) {
            // Same config on both sides, so merge cannot fail.
            let _ = a.merge(b);
        }
    }

    /// The feature values of this aggregate over a window of `size_ms`.
    pub fn features(&self, size_ms: i64) -> FeatureValues {
        let mut f = FeatureValues([f64::NAN; Feature::ALL.len()]);
        if self.count == 0 {
            f.0[Feature::Count as usize] = 0.0;
            f.0[Feature::Sum as usize] = 0.0;
            f.0[Feature::Rate as usize] = 0.0;
            return f;
        }
        let q = |q: f64| {
            self.sketch
                .as_ref()
                .and_then(|s| s.quantile(q).ok().flatten())
                .unwrap_or(f64::NAN)
        };
        f.0[Feature::Count as usize] = self.count as f64;
        f.0[Feature::Sum as usize] = self.sum;
        f.0[Feature::Mean as usize] = self.mean;
        f.0[Feature::Min as usize] = self.min;
        f.0[Feature::Max as usize] = self.max;
        f.0[Feature::Stddev as usize] = (self.m2 / self.count as f64).max(0.0).sqrt();
        f.0[Feature::Last as usize] = self.last;
        f.0[Feature::Rate as usize] = self.count as f64 * 1000.0 / size_ms as f64;
        f.0[Feature::P50 as usize] = q(0.50);
        f.0[Feature::P95 as usize] = q(0.95);
        f.0[Feature::P99 as usize] = q(0.99);
        f
    }

    /// Approximate heap bytes held (for the state-per-key figure).
    pub fn heap_bytes(&self) -> usize {
        self.sketch.as_ref().map_or(0, |s| {
            // DDSketch keeps two dense stores of u64 bins.
            std::mem::size_of::<DDSketch>() + s.length() * 8
        })
    }
}

/// Every feature of one field in one window, indexed by [`Feature`]. Undefined values (the
/// mean of nothing, quantiles without a sketch) are NaN.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeatureValues(pub [f64; Feature::ALL.len()]);

impl FeatureValues {
    /// The value of one feature.
    pub fn get(&self, f: Feature) -> f64 {
        self.0[f as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(values: &[(i64, f64)], size_ms: i64) -> [f64; 8] {
        let n = values.len() as f64;
        let sum: f64 = values.iter().map(|v| v.1).sum();
        let mean = sum / n;
        let var = values.iter().map(|v| (v.1 - mean).powi(2)).sum::<f64>() / n;
        let min = values.iter().map(|v| v.1).fold(f64::INFINITY, f64::min);
        let max = values.iter().map(|v| v.1).fold(f64::NEG_INFINITY, f64::max);
        // Greatest event time; the later arrival among ties.
        let last = values.iter().max_by_key(|v| v.0).unwrap().1;
        [
            n,
            sum,
            mean,
            min,
            max,
            var.sqrt(),
            last,
            n * 1000.0 / size_ms as f64,
        ]
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
    }

    proptest! {
        /// Any split of the values into panes, merged, equals the naive recomputation.
        #[test]
        fn merged_panes_equal_naive(
            values in prop::collection::vec((0i64..1000, -1.0e3f64..1.0e3), 1..200),
            cuts in prop::collection::vec(0usize..200, 0..5),
        ) {
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % values.len()).collect();
            bounds.push(0);
            bounds.push(values.len());
            bounds.sort();
            let mut total = Agg::new(true);
            for w in bounds.windows(2) {
                let mut pane = Agg::new(true);
                for &(t, v) in &values[w[0]..w[1]] {
                    pane.add(t, v);
                }
                total.merge(&pane);
            }
            let f = total.features(30_000);
            let want = naive(&values, 30_000);
            for (i, feat) in Feature::ALL[..8].iter().enumerate() {
                prop_assert!(close(f.get(*feat), want[i]), "{feat}: {} vs {}", f.get(*feat), want[i]);
            }
            // Quantiles within the sketch's relative accuracy of a true order statistic.
            let mut sorted: Vec<f64> = values.iter().map(|v| v.1).collect();
            sorted.sort_by(f64::total_cmp);
            let p50 = f.get(Feature::P50);
            let tol = |x: f64| SKETCH_RELATIVE_ACCURACY * x.abs() + 1e-6;
            prop_assert!(sorted.iter().any(|&x| (x - p50).abs() <= tol(x)), "p50 {p50} not near any value");
            prop_assert!(p50 >= sorted[0] - tol(sorted[0]) && p50 <= sorted[sorted.len() - 1] + tol(sorted[sorted.len() - 1]));
        }
    }

    #[test]
    fn last_is_by_event_time_not_arrival() {
        let mut a = Agg::new(false);
        a.add(2_000, 5.0);
        a.add(1_000, 9.0);
        assert_eq!(a.features(1000).get(Feature::Last), 5.0);
        assert!(a.features(1000).get(Feature::P50).is_nan());
    }

    #[test]
    fn empty_window_has_zero_count_and_nan_mean() {
        let f = Agg::new(false).features(1000);
        assert_eq!(f.get(Feature::Count), 0.0);
        assert!(f.get(Feature::Mean).is_nan());
    }
}
