//! What goes into and comes out of the engine: a consumed record, the key placement of a
//! partition, and the outputs of a call (alerts, window results, model inputs, dead letters,
//! traces, event scores) with the engine's running counters.

use super::DeadLetter;
use crate::TraceParent;
use crate::model::ModelInput;
use crate::rules::alert::Alert;

/// One consumed record.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    /// Kafka partition (0 for files).
    pub partition: i32,
    /// Offset in the partition (row number for files).
    pub offset: i64,
    /// Kafka message key.
    pub key: Option<&'a [u8]>,
    /// Message value.
    pub payload: &'a [u8],
}

/// Where the keys of a partition belong after its topic's partition count changed
/// ([`Engine::set_key_placement`]).
///
/// [`Engine::set_key_placement`]: super::Engine::set_key_placement
#[derive(Debug, Clone, Copy)]
pub struct KeyPlacement {
    /// The source's own partition number (Kafka's).
    pub partition: i32,
    /// The topic's partition count now.
    pub partitions: i32,
    /// The producers' partitioner: the partition of `partitions` a record key goes to.
    pub place: fn(&[u8], i32) -> i32,
}

/// A fired window of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    /// Tier name.
    pub tier: String,
    /// Entity key.
    pub key: String,
    /// Window start, epoch ms.
    pub start: i64,
    /// Window end (exclusive), epoch ms.
    pub end: i64,
    /// `<field>.<feature>` -> value (NaN features left out).
    pub features: Vec<(String, f64)>,
    /// A re-emission after a late event (allowed lateness).
    pub update: bool,
}

impl WindowResult {
    /// JSON record for the KPI topic.
    pub fn to_json(&self) -> Vec<u8> {
        let features: serde_json::Map<String, serde_json::Value> = self
            .features
            .iter()
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "window": self.tier, "key": self.key, "start": self.start, "end": self.end,
            "update": self.update, "features": features,
        }))
        .unwrap_or_default()
    }
}

/// What processing produced; drained by the caller.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Alert transitions.
    pub alerts: Vec<Alert>,
    /// Fired windows (only when [`EngineOptions::emit_windows`]).
    pub windows: Vec<WindowResult>,
    /// Dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// Per-event anomaly scores, one per processed record (only when
    /// [`EngineOptions::event_scores`]); 0 for dead-lettered records.
    pub event_scores: Vec<f64>,
    /// Feature vectors of model rules' closed windows, to score with
    /// the detector runtime's model scorer and hand back to [`Engine::apply_model_scores`].
    ///
    /// [`Engine::apply_model_scores`]: super::Engine::apply_model_scores
    pub model_inputs: Vec<ModelInput>,
    /// Fired windows that hold a traced event (see [`Engine::process_traced`]): the detector
    /// runtime opens a span per firing. Their model inputs and alerts carry the same trace.
    ///
    /// [`Engine::process_traced`]: super::Engine::process_traced
    pub fired_traces: Vec<FiredTrace>,
    /// Records for the group topic (`spec.groups`; key stage): (record key, value). Keyed by
    /// group; progress records ([`Engine::group_progress`]) go to every partition instead.
    ///
    /// [`Engine::group_progress`]: super::Engine::group_progress
    pub group_records: Vec<(Option<String>, Vec<u8>)>,
}

/// A fired window holding a traced event.
#[derive(Debug, Clone, PartialEq)]
pub struct FiredTrace {
    /// Tier name.
    pub tier: String,
    /// Entity key.
    pub key: Box<str>,
    /// Window start, epoch ms.
    pub start: i64,
    /// Window end (exclusive), epoch ms.
    pub end: i64,
    /// The trace of the window's newest traced event.
    pub trace: TraceParent,
}

impl Outputs {
    /// Empties every list, keeping capacity.
    pub fn clear(&mut self) {
        self.alerts.clear();
        self.windows.clear();
        self.dead_letters.clear();
        self.event_scores.clear();
        self.model_inputs.clear();
        self.fired_traces.clear();
        self.group_records.clear();
    }

    /// Whether nothing was produced.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.windows.is_empty()
            && self.dead_letters.is_empty()
            && self.model_inputs.is_empty()
            && self.group_records.is_empty()
    }
}

/// Engine switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineOptions {
    /// Emit every fired window (for a KPI sink).
    pub emit_windows: bool,
    /// Score every event against the windows it is in (for `vigil score`).
    pub event_scores: bool,
}

/// Monotonic counters of the engine, read by telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Records processed.
    pub records: u64,
    /// Records that could not be decoded.
    pub decode_errors: u64,
    /// Events too late for every tier (dead-lettered).
    pub late_dropped: u64,
    /// Events too far ahead of processing time (dead-lettered).
    pub future_dropped: u64,
    /// Late events that updated a fired window.
    pub late_updates: u64,
    /// Windows fired (first firings).
    pub windows_fired: u64,
    /// Alerts that started firing.
    pub alerts_firing: u64,
    /// Alerts resolved.
    pub alerts_resolved: u64,
    /// Model rule windows not scored because a contract feature was undefined in them.
    pub model_windows_undefined: u64,
    /// Records skipped because restored state already holds them (re-read after a restore from
    /// a checkpoint newer than the committed offset).
    pub replay_skipped: u64,
    /// Keys dropped after `spec.keyState.idleTimeout` without events.
    pub keys_expired: u64,
    /// Events of new keys dead-lettered because `spec.keyState.maxKeys` keys were held.
    pub keys_refused: u64,
    /// Events of keys that moved to another partition ([`DeadLetterReason::Moved`]).
    ///
    /// [`DeadLetterReason::Moved`]: super::DeadLetterReason::Moved
    pub moved_keys: u64,
}

impl Counters {
    /// Adds `o` to these (the counters of several engines, e.g. a detector's workers).
    pub fn add(&mut self, o: &Counters) {
        let Counters {
            records,
            decode_errors,
            late_dropped,
            future_dropped,
            late_updates,
            windows_fired,
            alerts_firing,
            alerts_resolved,
            model_windows_undefined,
            replay_skipped,
            keys_expired,
            keys_refused,
            moved_keys,
        } = o;
        self.records += records;
        self.decode_errors += decode_errors;
        self.late_dropped += late_dropped;
        self.future_dropped += future_dropped;
        self.late_updates += late_updates;
        self.windows_fired += windows_fired;
        self.alerts_firing += alerts_firing;
        self.alerts_resolved += alerts_resolved;
        self.model_windows_undefined += model_windows_undefined;
        self.replay_skipped += replay_skipped;
        self.keys_expired += keys_expired;
        self.keys_refused += keys_refused;
        self.moved_keys += moved_keys;
    }
}
