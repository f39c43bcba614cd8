//! Stage lag against the pipeline's thresholds (`spec.lag`): keeps the last minute of each
//! stage's latency samples (the same observations as `vigil_stage_latency_seconds`), and at
//! each [`LagMonitor::refresh`] computes p50/p95/p99 per stage and where the p99 stands against
//! `warn` and `critical`. Exposed as gauges (`vigil_stage_lag_p99_seconds{stage}`,
//! `vigil_stage_lag_level{stage}`: 0 ok, 1 warn, 2 critical; the chart's PrometheusRule fires
//! on the level) and as JSON on `GET /lag` ([`vigil_api::contract::detector::lag`]), which the
//! operator reads for the pipeline's `Lagging` condition.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_api::contract::detector::lag::{LagLevel, LagReport, StageLag};

/// How far back the percentiles look.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most samples kept per stage (the oldest go first); bounds memory and the sort.
pub const MAX_SAMPLES: usize = 4096;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Debug)]
struct State {
    warn_s: f64,
    critical_s: f64,
    samples: BTreeMap<&'static str, VecDeque<(Instant, f64)>>,
    report: LagReport,
}

/// The last minute of stage latencies and the thresholds; clones share them.
#[derive(Clone, Debug)]
pub struct LagMonitor {
    state: Arc<Mutex<State>>,
    p99: Family<StageLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    level: Family<StageLabels, Gauge>,
}

impl Default for LagMonitor {
    fn default() -> Self {
        let (warn, critical) = vigil_api::v1alpha1::LagThresholds::millis(None);
        Self {
            state: Arc::new(Mutex::new(State {
                warn_s: warn as f64 / 1e3,
                critical_s: critical as f64 / 1e3,
                samples: BTreeMap::new(),
                report: LagReport::default(),
            })),
            p99: Family::default(),
            level: Family::default(),
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl LagMonitor {
    /// Registers `stage_lag_p99_seconds` and `stage_lag_level` in `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "stage_lag_p99",
            "99th percentile of a stage's latency over the last minute",
            prometheus_client::registry::Unit::Seconds,
            self.p99.clone(),
        );
        r.register(
            "stage_lag_level",
            "Where a stage's p99 stands against spec.lag: 0 ok, 1 past warn, 2 past critical",
            self.level.clone(),
        );
    }

    /// Sets the thresholds (`spec.lag`, ms).
    pub fn set_thresholds(&self, warn_ms: i64, critical_ms: i64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.warn_s = warn_ms as f64 / 1e3;
        s.critical_s = critical_ms as f64 / 1e3;
    }

    /// One latency sample of `stage`.
    pub fn observe(&self, stage: &'static str, seconds: f64, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let q = s.samples.entry(stage).or_default();
        if q.len() == MAX_SAMPLES {
            q.pop_front();
        }
        q.push_back((now, seconds));
    }

    /// Drops samples older than [`WINDOW`], recomputes the report and the gauges.
    pub fn refresh(&self, now: Instant) -> LagReport {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (warn, critical) = (s.warn_s, s.critical_s);
        let mut stages = Vec::new();
        for (stage, q) in &mut s.samples {
            while q
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
            {
                q.pop_front();
            }
            let labels = StageLabels {
                stage: (*stage).to_string(),
            };
            if q.is_empty() {
                self.p99.get_or_create(&labels).set(0.0);
                self.level.get_or_create(&labels).set(0);
                continue;
            }
            let mut v: Vec<f64> = q.iter().map(|(_, x)| *x).collect();
            v.sort_by(f64::total_cmp);
            let p99 = percentile(&v, 0.99);
            let level = if p99 > critical {
                LagLevel::Critical
            } else if p99 > warn {
                LagLevel::Warn
            } else {
                LagLevel::Ok
            };
            self.p99.get_or_create(&labels).set(p99);
            self.level.get_or_create(&labels).set(level as i64);
            stages.push(StageLag {
                stage: (*stage).to_string(),
                samples: v.len() as u64,
                p50: percentile(&v, 0.5),
                p95: percentile(&v, 0.95),
                p99,
                level,
            });
        }
        s.report = LagReport {
            warn_seconds: warn,
            critical_seconds: critical,
            stages,
        };
        s.report.clone()
    }

    /// The report of the last [`Self::refresh`].
    pub fn report(&self) -> LagReport {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .report
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p99_of_the_last_minute_is_judged_against_the_thresholds() {
        let m = LagMonitor::default();
        m.set_thresholds(1_000, 5_000);
        let t0 = Instant::now();
        for i in 0..100 {
            m.observe("processed_to_delivered", f64::from(i) / 100.0, t0);
        }
        let r = m.refresh(t0);
        let s = &r.stages[0];
        assert_eq!((s.samples, s.level), (100, LagLevel::Ok));
        assert_eq!((s.p50, s.p99), (0.49, 0.98));
        // Two slow deliveries in a hundred: past warn, not critical.
        m.observe("processed_to_delivered", 2.0, t0);
        m.observe("processed_to_delivered", 2.5, t0);
        let s = m.refresh(t0).stages[0].clone();
        assert_eq!(s.level, LagLevel::Warn);
        m.observe("processed_to_delivered", 9.0, t0);
        m.observe("processed_to_delivered", 9.0, t0);
        m.observe("processed_to_delivered", 9.0, t0);
        assert_eq!(m.refresh(t0).stages[0].level, LagLevel::Critical);
        // A minute later they have aged out.
        let later = t0 + WINDOW + Duration::from_secs(1);
        m.observe("processed_to_delivered", 0.1, later);
        let s = m.refresh(later).stages[0].clone();
        assert_eq!((s.samples, s.level), (1, LagLevel::Ok));
        assert_eq!(m.report().stages[0].p99, 0.1);
    }
}
