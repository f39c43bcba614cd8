//! What a shadow candidate (`spec.rollout.strategy: Shadow`) says of the windows it scores:
//! evidence beside the served revision, recorded on the KPI sink by the detector, never an
//! alert.

use super::ModelInput;

/// A shadow candidate's would-be verdict on one window: what it scored and whether the window
/// would have been anomalous (the model's threshold, `spec.output`), beside the revision that
/// decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowVerdict {
    /// AnomalyModel name.
    pub model: String,
    /// The candidate revision that scored it in the shadow.
    pub revision: String,
    /// The stable revision whose score decided the window.
    pub served_revision: String,
    /// DetectionRule name.
    pub rule: String,
    /// Entity key.
    pub key: Box<str>,
    /// Window start, epoch ms.
    pub window_start: i64,
    /// Window end (exclusive), epoch ms.
    pub window_end: i64,
    /// The candidate's raw score.
    pub raw_score: f32,
    /// Mapped to [0, 1] (0.5 at the threshold).
    pub score: f64,
    /// Past the threshold: the candidate would have flagged the window.
    pub anomalous: bool,
}

impl ShadowVerdict {
    /// The verdict on `input` from the candidate's raw score; `None` for a non-finite score.
    pub fn of(input: &ModelInput, raw: f32) -> Option<Self> {
        let c = &input.contract;
        let (score, anomalous) = c.map_score(f64::from(raw), c.threshold)?;
        Some(Self {
            model: c.model.clone(),
            revision: input.version().to_string(),
            served_revision: c.version.clone(),
            rule: input.rule_name.clone(),
            key: input.key.clone(),
            window_start: input.window_start,
            window_end: input.window_end,
            raw_score: raw,
            score,
            anomalous,
        })
    }

    /// The KPI-sink record: a JSON object with `type` `dev.vigil.model.shadow`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": "dev.vigil.model.shadow",
            "model": self.model, "revision": self.revision,
            "servedRevision": self.served_revision, "rule": self.rule, "key": self.key,
            "start": self.window_start, "end": self.window_end,
            "rawScore": self.raw_score, "score": self.score, "anomalous": self.anomalous,
        }))
        .unwrap_or_default()
    }
}
