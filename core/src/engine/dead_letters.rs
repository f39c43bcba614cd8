//! Dead letters: why an event was not used ([`DeadLetterReason`], the `vigil.reason` header),
//! the record sent to the dead-letter sink ([`DeadLetter`]) and the count by reason a run
//! reports ([`DeadLetterTally`]).

use crate::decode::DecodeError;

/// Why an event went to the dead-letter sink.
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetterReason {
    /// It could not be decoded.
    Decode(DecodeError),
    /// Its event time is further ahead of processing time than
    /// `spec.format.eventTime.maxFutureSkew`.
    Future {
        /// Event time of the event.
        event_time_ms: i64,
        /// Processing time when it was read.
        processing_time_ms: i64,
        /// The bound.
        max_skew_ms: i64,
    },
    /// Its key is new and the detector already holds `spec.keyState.maxKeys` keys.
    Keys {
        /// The bound.
        max_keys: usize,
    },
    /// Its key left this partition when the topic's partition count grew: its state was handed
    /// over to the owner of partition `partition` of `partitions`, and this record still came
    /// to the old one (a producer that had not yet seen the new count).
    Moved {
        /// The partition the key belongs to now.
        partition: i32,
        /// The topic's partition count.
        partitions: i32,
    },
    /// It arrived after every window it belongs to closed for good.
    Late {
        /// Event time of the event.
        event_time_ms: i64,
        /// The lowest watermark among the tiers.
        watermark_ms: i64,
    },
}

impl DeadLetterReason {
    /// Short machine-readable kind for the `vigil.reason` header: `decode`, `future`, `keys`,
    /// `moved_key` or `late`.
    pub fn kind(&self) -> &'static str {
        match self {
            DeadLetterReason::Decode(_) => "decode",
            DeadLetterReason::Future { .. } => "future",
            DeadLetterReason::Keys { .. } => "keys",
            DeadLetterReason::Moved { .. } => "moved_key",
            DeadLetterReason::Late { .. } => "late",
        }
    }
}

impl DeadLetterReason {
    /// The reason without the record's own values (event times), to count alike reasons
    /// together.
    pub fn class(&self) -> String {
        match self {
            DeadLetterReason::Decode(e) => format!("decode: {e}"),
            DeadLetterReason::Future { max_skew_ms, .. } => format!(
                "future: event time more than maxFutureSkew {max_skew_ms} ms ahead of processing time"
            ),
            DeadLetterReason::Keys { max_keys } => format!(
                "keys: a new key while the detector holds spec.keyState.maxKeys = {max_keys} keys"
            ),
            DeadLetterReason::Moved { .. } => MOVED_KEY.into(),
            DeadLetterReason::Late { .. } => {
                "late: behind the watermark by more than every window's allowed lateness".into()
            }
        }
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterReason::Decode(e) => write!(f, "decode: {e}"),
            DeadLetterReason::Future {
                event_time_ms,
                processing_time_ms,
                max_skew_ms,
            } => write!(
                f,
                "future: event time {event_time_ms} ms is {} ms ahead of processing time {processing_time_ms} ms, more than maxFutureSkew {max_skew_ms} ms",
                event_time_ms.saturating_sub(*processing_time_ms)
            ),
            DeadLetterReason::Keys { max_keys } => write!(
                f,
                "keys: a new key while the detector holds spec.keyState.maxKeys = {max_keys} keys"
            ),
            DeadLetterReason::Moved {
                partition,
                partitions,
            } => write!(
                f,
                "{MOVED_KEY}; the key belongs to partition {partition} of {partitions}"
            ),
            DeadLetterReason::Late {
                event_time_ms,
                watermark_ms,
            } => write!(
                f,
                "late: event time {event_time_ms} ms is behind the watermark {watermark_ms} ms by more than every window's allowed lateness"
            ),
        }
    }
}

const MOVED_KEY: &str = "moved_key: the key moved to another partition when the topic's partition count grew, and its state with it; this record still came to the old partition";

/// Dead letters counted by reason: the first [`DeadLetterTally::MAX_REASONS`] distinct reason
/// texts, the rest under `other`. What a run that dead-letters everything reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterTally {
    counts: Vec<(String, u64)>,
    other: u64,
}

impl DeadLetterTally {
    /// Distinct reasons kept.
    pub const MAX_REASONS: usize = 32;

    /// Counts one dead letter under its [`DeadLetterReason::class`].
    pub fn add(&mut self, reason: &DeadLetterReason) {
        self.count(reason.class(), 1);
    }

    fn count(&mut self, text: String, n: u64) {
        if let Some(c) = self.counts.iter_mut().find(|(t, _)| *t == text) {
            c.1 += n;
        } else if self.counts.len() < Self::MAX_REASONS {
            self.counts.push((text, n));
        } else {
            self.other += n;
        }
    }

    /// Adds the counts of `other` (another engine's).
    pub fn merge(&mut self, other: &DeadLetterTally) {
        for (text, n) in &other.counts {
            self.count(text.clone(), *n);
        }
        self.other += other.other;
    }

    /// Dead letters counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.1).sum::<u64>() + self.other
    }

    /// The `n` most frequent reasons with their counts, most frequent first.
    pub fn top(&self, n: usize) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.counts.iter().map(|(t, c)| (t.as_str(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }

    /// `"N × reason; M × reason"` of the `n` most frequent reasons.
    pub fn summary(&self, n: usize) -> String {
        self.top(n)
            .iter()
            .map(|(t, c)| format!("{c} × {t}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// An event sent to the dead-letter sink, with its original bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Why.
    pub reason: DeadLetterReason,
    /// Original message key.
    pub key: Option<Vec<u8>>,
    /// Original message value.
    pub payload: Vec<u8>,
}
