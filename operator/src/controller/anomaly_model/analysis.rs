//! Pure: the analysis of an AnomalyModel rollout (`spec.rollout.analysis`). From two reads of
//! the detectors' per-revision counters ([`RolloutEvidence`], one per detector pod) it sums
//! what each revision did in between ([`delta`]), judges the candidate against the stable
//! revision ([`judge`]) and moves `status.rollout` on ([`step`]).
//!
//! The checks, each over one interval (Flagger's canary analysis in shape):
//! - **samples**: fewer than `minSamples` candidate windows (scored or failed) is
//!   inconclusive: the interval neither passes nor fails;
//! - **error rate**: failed / (scored + failed) of the candidate, at most `maxErrorRate`;
//! - **latency**: the 99th percentile of the candidate's batch latency (the upper bound of the
//!   histogram bucket it falls in, [`LATENCY_BOUNDS_MS`]) at most `maxLatencyP99`;
//! - **anomaly rate**: (anomalous + 1) / (scored + 1) of the candidate over the same of the
//!   stable revision at most `maxAnomalyRateRatio` (the +1 is Laplace's rule of succession,
//!   so a stable rate of zero still compares); skipped when the stable revision scored fewer
//!   than `minSamples` windows (a canary at weight 100).
//!
//! One failed check fails the rollout; `iterations` passed intervals in a row promote it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use vigil_api::contract::detector::rollouts::{LATENCY_BOUNDS_MS, RolloutEvidence};
use vigil_api::v1alpha1::{
    AnalysisRecord, RevisionFigures, Rollout, RolloutAnalysis, RolloutPhase, RolloutStatus,
    analysis_defaults as d, duration_ms,
};

/// One read of every detector pod: pod name -> what it answered.
pub type Sample = BTreeMap<String, RolloutEvidence>;

/// What one revision did over an interval, summed over the detectors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    /// Windows scored.
    pub scored: u64,
    /// Windows whose scoring failed.
    pub failed: u64,
    /// Scored windows past the threshold.
    pub anomalous: u64,
    /// Alerts fired on its scores.
    pub alerts: u64,
    /// Batches per latency bucket ([`LATENCY_BOUNDS_MS`], then overflow).
    pub latency: Vec<u64>,
}

impl Totals {
    fn add(&mut self, scored: u64, failed: u64, anomalous: u64, latency: &[u64]) {
        self.scored += scored;
        self.failed += failed;
        self.anomalous += anomalous;
        if self.latency.len() < latency.len() {
            self.latency.resize(latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(latency) {
            *a += b;
        }
    }

    /// The 99th percentile of batch latency, ms: the upper bound of its bucket (twice the
    /// last bound when it is past the last one); `None` without batches.
    pub fn latency_p99_ms(&self) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        // The smallest bucket whose cumulative count reaches 99 % of the batches.
        let rank = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(
                    LATENCY_BOUNDS_MS
                        .get(i)
                        .copied()
                        .unwrap_or(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1] * 2.0),
                );
            }
        }
        None
    }

    /// Anomalous windows per 1,000 scored.
    pub fn anomaly_rate_per_mille(&self) -> f64 {
        if self.scored == 0 {
            0.0
        } else {
            self.anomalous as f64 * 1000.0 / self.scored as f64
        }
    }

    /// The figures status shows.
    pub fn figures(&self) -> RevisionFigures {
        RevisionFigures {
            windows: i64::try_from(self.scored).unwrap_or(i64::MAX),
            failed: i64::try_from(self.failed).unwrap_or(i64::MAX),
            anomaly_rate_per_mille: (self.anomaly_rate_per_mille() * 10.0).round() / 10.0,
            latency_p99_ms: self.latency_p99_ms(),
            alerts: i64::try_from(self.alerts).unwrap_or(i64::MAX),
        }
    }
}

/// What each revision of `model` did between `before` and `after`, by revision. A pod whose
/// `instance` changed (restarted) counts everything it reports now; a pod gone since is left
/// out, and so are counters that went down.
pub fn delta(before: &Sample, after: &Sample, model: &str) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for (pod, now) in after {
        let prev = before.get(pod).filter(|p| p.instance == now.instance);
        for r in now.revisions.iter().filter(|r| r.model == model) {
            let old = prev.and_then(|p| {
                p.revisions
                    .iter()
                    .find(|o| o.model == model && o.revision == r.revision)
            });
            let sub = |new: u64, old: Option<u64>| new.saturating_sub(old.unwrap_or(0));
            let latency: Vec<u64> = r
                .latency
                .iter()
                .enumerate()
                .map(|(i, n)| sub(*n, old.and_then(|o| o.latency.get(i).copied())))
                .collect();
            let t = out.entry(r.revision.clone()).or_default();
            t.add(
                sub(r.scored, old.map(|o| o.scored)),
                sub(r.failed, old.map(|o| o.failed)),
                sub(r.anomalous, old.map(|o| o.anomalous)),
                &latency,
            );
            t.alerts += sub(r.alerts, old.map(|o| o.alerts));
        }
    }
    out
}

/// The verdict on one interval, with a sentence saying why.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every check passed.
    Passed(String),
    /// A check failed.
    Failed(String),
    /// Too few candidate windows to judge.
    Inconclusive(String),
}

impl Verdict {
    fn text(&self) -> String {
        match self {
            Verdict::Passed(m) => format!("Passed: {m}"),
            Verdict::Failed(m) => format!("Failed: {m}"),
            Verdict::Inconclusive(m) => format!("Inconclusive: {m}"),
        }
    }
}

/// The interval of `analysis`, ms.
pub fn interval_ms(analysis: &RolloutAnalysis) -> i64 {
    analysis
        .interval
        .as_ref()
        .map_or(d::INTERVAL_SECS as i64 * 1000, duration_ms)
        .max(1000)
}

/// Judges `candidate` against `stable` over one interval (see the module header).
pub fn judge(analysis: &RolloutAnalysis, candidate: &Totals, stable: &Totals) -> Verdict {
    let min = u64::try_from(analysis.min_samples.unwrap_or(d::MIN_SAMPLES)).unwrap_or(1);
    let n = candidate.scored + candidate.failed;
    if n < min {
        return Verdict::Inconclusive(format!(
            "the candidate had {n} windows, {min} are needed (minSamples)"
        ));
    }
    let error_rate = candidate.failed as f64 / n as f64;
    let max_error = analysis.max_error_rate.unwrap_or(d::MAX_ERROR_RATE);
    if error_rate > max_error {
        return Verdict::Failed(format!(
            "error rate {error_rate:.3} ({} of {n} windows failed) is over maxErrorRate {max_error}",
            candidate.failed
        ));
    }
    let mut passed = vec![format!("error rate {error_rate:.3}")];
    if let Some(max) = &analysis.max_latency_p99 {
        let max_ms = duration_ms(max) as f64;
        if let Some(p99) = candidate.latency_p99_ms() {
            if p99 > max_ms {
                return Verdict::Failed(format!(
                    "batch latency p99 {p99} ms is over maxLatencyP99 {max_ms} ms"
                ));
            }
            passed.push(format!("latency p99 <= {p99} ms"));
        }
    }
    let c = candidate.anomaly_rate_per_mille();
    let s = stable.anomaly_rate_per_mille();
    if stable.scored >= min {
        let ratio = ((candidate.anomalous + 1) as f64 / (candidate.scored + 1) as f64)
            / ((stable.anomalous + 1) as f64 / (stable.scored + 1) as f64);
        let max_ratio = analysis
            .max_anomaly_rate_ratio
            .unwrap_or(d::MAX_ANOMALY_RATE_RATIO);
        if ratio > max_ratio {
            return Verdict::Failed(format!(
                "anomaly rate {c:.1} per 1,000 windows is {ratio:.1}x the stable revision's {s:.1} (maxAnomalyRateRatio {max_ratio})"
            ));
        }
        passed.push(format!(
            "anomaly rate {c:.1} per 1,000 windows, {ratio:.2}x the stable revision's {s:.1}"
        ));
    } else {
        passed.push(format!(
            "anomaly rate {c:.1} per 1,000 windows, not compared: the stable revision scored {} windows",
            stable.scored
        ));
    }
    Verdict::Passed(passed.join(", "))
}

/// `status.rollout` for `rollout` (whose `analysis` is set) after an interval judged
/// `verdict` (`None`: nothing judged this time). A status about another candidate (revision
/// or digest) starts over; a final one (Promoted, Failed) stays.
pub fn step(
    old: Option<&RolloutStatus>,
    rollout: &Rollout,
    judged: Option<(Verdict, &Totals, &Totals)>,
    now: &Time,
) -> RolloutStatus {
    let c = &rollout.candidate;
    let mut s = match old {
        Some(o) if o.candidate == c.revision && o.sha256 == c.artifact.sha256 => o.clone(),
        _ => RolloutStatus {
            candidate: c.revision.clone(),
            sha256: c.artifact.sha256.clone(),
            phase: RolloutPhase::Analysing,
            message: "waiting for the first analysis interval".into(),
            passed_intervals: 0,
            started_at: now.clone(),
            finished_at: None,
            last_analysis: None,
        },
    };
    if s.phase != RolloutPhase::Analysing {
        return s;
    }
    let Some((verdict, candidate, stable)) = judged else {
        return s;
    };
    let analysis = rollout.analysis.as_ref();
    let iterations = analysis
        .and_then(|a| a.iterations)
        .unwrap_or(d::ITERATIONS)
        .max(1);
    s.last_analysis = Some(AnalysisRecord {
        at: now.clone(),
        verdict: verdict.text(),
        candidate: candidate.figures(),
        stable: stable.figures(),
    });
    let deadline_ms = analysis
        .and_then(|a| a.progress_deadline.as_ref())
        .map_or(d::PROGRESS_DEADLINE_SECS as i64 * 1000, duration_ms);
    let running_ms = now.0.as_millisecond() - s.started_at.0.as_millisecond();
    match verdict {
        Verdict::Inconclusive(m) if running_ms > deadline_ms => {
            s.phase = RolloutPhase::Failed;
            s.finished_at = Some(now.clone());
            s.message = format!(
                "revision {} reached no verdict within progressDeadline ({} s) and gets no windows: {m}",
                c.revision,
                deadline_ms / 1000
            );
        }
        Verdict::Inconclusive(m) => {
            s.message = format!(
                "{} of {iterations} intervals passed; the last was inconclusive: {m}",
                s.passed_intervals
            );
        }
        Verdict::Failed(m) => {
            s.phase = RolloutPhase::Failed;
            s.finished_at = Some(now.clone());
            s.message = format!(
                "revision {} failed the analysis and gets no windows: {m}",
                c.revision
            );
        }
        Verdict::Passed(m) => {
            s.passed_intervals += 1;
            if s.passed_intervals >= iterations {
                s.phase = RolloutPhase::Promoted;
                s.finished_at = Some(now.clone());
                s.message = format!(
                    "revision {} passed {iterations} intervals and serves every key: {m}",
                    c.revision
                );
            } else {
                s.message = format!(
                    "{} of {iterations} intervals passed: {m}",
                    s.passed_intervals
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_api::contract::detector::rollouts::RevisionEvidence;
    use vigil_api::v1alpha1::{Artifact, CandidateRevision, RolloutStrategy};

    fn ev(revision: &str, scored: u64, failed: u64, anomalous: u64) -> RevisionEvidence {
        let mut latency = vec![0; LATENCY_BOUNDS_MS.len() + 1];
        latency[3] = scored / 10;
        RevisionEvidence {
            model: "m".into(),
            revision: revision.into(),
            scored,
            failed,
            anomalous,
            alerts: anomalous / 2,
            latency,
        }
    }

    fn sample(instance: &str, revs: Vec<RevisionEvidence>) -> RolloutEvidence {
        RolloutEvidence {
            instance: instance.into(),
            revisions: revs,
        }
    }

    fn totals(scored: u64, failed: u64, anomalous: u64) -> Totals {
        let mut t = Totals::default();
        t.add(scored, failed, anomalous, &[0, 0, 0, scored / 10]);
        t
    }

    fn analysis() -> RolloutAnalysis {
        RolloutAnalysis {
            interval: None,
            iterations: Some(2),
            min_samples: Some(100),
            max_anomaly_rate_ratio: None,
            max_error_rate: None,
            max_latency_p99: Some("20ms".parse().unwrap()),
            progress_deadline: Some("60s".parse().unwrap()),
        }
    }

    fn rollout() -> Rollout {
        Rollout {
            candidate: CandidateRevision {
                revision: "2".into(),
                artifact: Artifact {
                    uri: "file://m.onnx".into(),
                    sha256: "ab".repeat(32),
                },
            },
            strategy: RolloutStrategy::Canary,
            weight: Some(20),
            analysis: Some(analysis()),
        }
    }

    fn t(s: i64) -> Time {
        crate::controller::test_fixtures::time(s)
    }

    #[test]
    fn delta_subtracts_per_pod_and_counts_a_restarted_pod_from_zero() {
        let before = Sample::from([
            (
                "a".into(),
                sample("a1", vec![ev("1", 100, 0, 1), ev("2", 10, 0, 5)]),
            ),
            ("b".into(), sample("b1", vec![ev("1", 500, 0, 0)])),
        ]);
        let after = Sample::from([
            (
                "a".into(),
                sample("a1", vec![ev("1", 300, 0, 2), ev("2", 60, 2, 30)]),
            ),
            // b restarted: its 40 windows all came after the first read.
            ("b".into(), sample("b2", vec![ev("1", 40, 0, 0)])),
            // c appeared.
            ("c".into(), sample("c1", vec![ev("2", 5, 0, 0)])),
        ]);
        let d = delta(&before, &after, "m");
        assert_eq!(d["1"].scored, 200 + 40);
        assert_eq!(d["1"].anomalous, 1);
        assert_eq!(d["2"].scored, 50 + 5);
        assert_eq!(d["2"].failed, 2);
        assert_eq!(d["2"].anomalous, 25);
        assert_eq!(d["2"].alerts, 15 - 2);
        assert_eq!(d["2"].latency[3], 6 - 1);
        assert!(delta(&before, &after, "other").is_empty());
    }

    #[test]
    fn p99_is_the_bucket_bound_that_covers_99_percent() {
        let mut t = Totals::default();
        assert_eq!(t.latency_p99_ms(), None);
        let mut l = vec![0; LATENCY_BOUNDS_MS.len() + 1];
        l[2] = 99; // <= 5 ms
        l[6] = 1; // <= 100 ms
        t.add(0, 0, 0, &l);
        assert_eq!(t.latency_p99_ms(), Some(5.0));
        t.add(0, 0, 0, &l);
        l[2] = 0;
        l[6] = 0;
        l[LATENCY_BOUNDS_MS.len()] = 10;
        t.add(0, 0, 0, &l);
        assert_eq!(t.latency_p99_ms(), Some(60_000.0));
    }

    #[test]
    fn each_check_can_fail_and_few_samples_are_inconclusive() {
        let a = analysis();
        let stable = totals(1000, 0, 10);
        assert!(matches!(
            judge(&a, &totals(99, 0, 0), &stable),
            Verdict::Inconclusive(m) if m.contains("99 windows, 100 are needed")
        ));
        assert!(matches!(
            judge(&a, &totals(200, 0, 2), &stable),
            Verdict::Passed(m) if m.contains("anomaly rate 10.0 per 1,000")
        ));
        // Flooding: every window anomalous.
        assert!(matches!(
            judge(&a, &totals(200, 0, 200), &stable),
            Verdict::Failed(m) if m.contains("maxAnomalyRateRatio 3")
        ));
        // At the limit passes (10 of 200 = 0.05).
        assert!(matches!(
            judge(&a, &totals(190, 10, 0), &stable),
            Verdict::Passed(m) if m.contains("error rate 0.050")
        ));
        assert!(matches!(
            judge(&a, &totals(180, 20, 0), &stable),
            Verdict::Failed(m) if m.contains("error rate 0.100")
        ));
        let mut slow = totals(200, 0, 2);
        slow.latency = vec![0; LATENCY_BOUNDS_MS.len() + 1];
        slow.latency[5] = 20; // <= 50 ms
        assert!(matches!(
            judge(&a, &slow, &stable),
            Verdict::Failed(m) if m.contains("p99 50 ms")
        ));
        // A stable revision with no windows (weight 100) is not compared.
        assert!(matches!(
            judge(&a, &totals(200, 0, 200), &Totals::default()),
            Verdict::Passed(m) if m.contains("not compared")
        ));
        // A stable rate of zero still compares (one anomalous window added to each side).
        assert!(matches!(
            judge(&a, &totals(1000, 0, 4), &totals(1000, 0, 0)),
            Verdict::Failed(_)
        ));
        assert!(matches!(
            judge(&a, &totals(1000, 0, 1), &totals(1000, 0, 0)),
            Verdict::Passed(_)
        ));
    }

    #[test]
    fn passes_in_a_row_promote_a_failure_is_final_and_a_new_candidate_starts_over() {
        let r = rollout();
        let (c, s) = (totals(200, 0, 2), totals(1000, 0, 10));
        let st = step(None, &r, None, &t(1));
        assert_eq!(st.phase, RolloutPhase::Analysing);
        assert_eq!(st.started_at, t(1));
        let st = step(
            Some(&st),
            &r,
            Some((judge(&analysis(), &c, &s), &c, &s)),
            &t(2),
        );
        assert_eq!(
            (st.phase, st.passed_intervals),
            (RolloutPhase::Analysing, 1)
        );
        let inc = totals(10, 0, 0);
        let st = step(
            Some(&st),
            &r,
            Some((judge(&analysis(), &inc, &s), &inc, &s)),
            &t(3),
        );
        assert_eq!(
            st.passed_intervals, 1,
            "inconclusive neither passes nor fails"
        );
        assert!(st.message.contains("inconclusive"));
        let st = step(
            Some(&st),
            &r,
            Some((judge(&analysis(), &c, &s), &c, &s)),
            &t(4),
        );
        assert_eq!(st.phase, RolloutPhase::Promoted);
        assert_eq!(st.finished_at, Some(t(4)));
        // Final: later intervals change nothing.
        let flood = totals(200, 0, 200);
        let again = step(
            Some(&st),
            &r,
            Some((judge(&analysis(), &flood, &s), &flood, &s)),
            &t(5),
        );
        assert_eq!(again, st);

        let failed = step(
            None,
            &r,
            Some((judge(&analysis(), &flood, &s), &flood, &s)),
            &t(6),
        );
        assert_eq!(failed.phase, RolloutPhase::Failed);
        assert!(failed.message.contains("revision 2 failed the analysis"));
        let rec = failed.last_analysis.as_ref().unwrap();
        assert_eq!(rec.candidate.anomaly_rate_per_mille, 1000.0);
        assert_eq!(rec.stable.anomaly_rate_per_mille, 10.0);
        // The same revision with another artifact is a new rollout.
        let mut r2 = r.clone();
        r2.candidate.artifact.sha256 = "cd".repeat(32);
        let fresh = step(Some(&failed), &r2, None, &t(7));
        assert_eq!(fresh.phase, RolloutPhase::Analysing);
        assert_eq!(fresh.started_at, t(7));
    }
}
