//! Decoding: JSON event bytes -> key, event time and numeric fields, per the pipeline's field
//! mapping. Only the mapped paths are materialised; everything else is skipped by serde_json
//! without allocation. Errors name what is wrong and where, for the dead-letter `reason`.

mod time;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use vigil_api::v1alpha1::TimeFormat;

use crate::config::{FieldPath, FieldTable, Layout, PipelineConfig};
pub use time::{MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS, echo, parse_event_time};

/// Why an event could not be decoded. The `Display` form is the dead-letter reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON object.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The key path is absent and the Kafka message has no key.
    #[error("missing key field `{0}`")]
    MissingKey(String),
    /// The event-time path is absent.
    #[error("missing event time field `{0}`")]
    MissingEventTime(String),
    /// The event time could not be parsed.
    #[error("event time field `{path}`: {reason}")]
    BadEventTime {
        /// Path of the event time.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A mapped field holds something that is not a number.
    #[error("field `{0}` is not a number")]
    NotNumeric(String),
    /// A mapped field holds NaN or an infinity (as a string such as `"NaN"`, `"inf"` or
    /// `"1e400"`); features are defined over finite numbers only.
    #[error("field `{0}` is not a finite number")]
    NonFinite(String),
    /// A mapped member occurs twice in one JSON object (RFC 8259 leaves its meaning open).
    #[error("member `{0}` occurs more than once")]
    DuplicateMember(String),
    /// No mapped numeric field was present.
    #[error("no numeric field found (expected {0})")]
    NoFields(String),
    /// A narrow event names a parameter the pipeline does not keep.
    #[error("parameter `{0}` is not one of the pipeline's parameters")]
    UnknownParameter(String),
    /// A record of the group topic (`spec.groups`) that the group stage cannot read.
    #[error("group topic record: {0}")]
    Group(String),
}

/// A decoded event, borrowing from the input bytes where it can.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    /// Entity key.
    pub key: Cow<'a, str>,
    /// Event time, epoch milliseconds.
    pub event_time_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    Key,
    Time,
    Field(u16),
    Parameter,
    Value,
}

#[derive(Debug, Default)]
struct Node {
    entries: Vec<(String, Entry)>,
}

#[derive(Debug, Default)]
struct Entry {
    slots: Vec<Slot>,
    children: Node,
}

impl Node {
    fn insert(&mut self, path: &[String], slot: Slot) {
        let (head, rest) = path.split_first().expect("paths are non-empty");
        let idx = match self.entries.iter().position(|(k, _)| k == head) {
            Some(i) => i,
            None => {
                self.entries.push((head.clone(), Entry::default()));
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[idx].1;
        if rest.is_empty() {
            entry.slots.push(slot);
        } else {
            entry.children.insert(rest, slot);
        }
    }
}

#[derive(Default)]
struct Scratch<'de> {
    key: Option<Cow<'de, str>>,
    time: Option<Result<i64, String>>,
    parameter: Option<Cow<'de, str>>,
    value: Option<f64>,
    not_numeric: Option<Slot>,
    /// A mapped value that parsed to NaN or an infinity (`"NaN"`, `"inf"`, `"1e400"`).
    non_finite: Option<Slot>,
    /// A mapped member that occurs twice in one object.
    duplicate: Option<Slot>,
}

/// Decodes JSON events for one pipeline.
#[derive(Debug)]
pub struct Decoder {
    root: Node,
    key_path: Option<String>,
    time_path: String,
    time_format: TimeFormat,
    wide_paths: Vec<String>,
    narrow: bool,
}

fn join(p: &FieldPath) -> String {
    p.join(".")
}

impl Decoder {
    /// A decoder for the pipeline's field mapping.
    pub fn new(cfg: &PipelineConfig) -> Self {
        let mut root = Node::default();
        if let Some(k) = &cfg.key {
            root.insert(k, Slot::Key);
        }
        root.insert(&cfg.event_time, Slot::Time);
        let mut wide_paths = Vec::new();
        let narrow = match &cfg.layout {
            Layout::Wide { fields } => {
                for (i, (_, path)) in fields.iter().enumerate() {
                    root.insert(path, Slot::Field(i as u16));
                    wide_paths.push(join(path));
                }
                false
            }
            Layout::Narrow {
                parameter, value, ..
            } => {
                root.insert(parameter, Slot::Parameter);
                root.insert(value, Slot::Value);
                wide_paths.push(join(value));
                true
            }
        };
        Self {
            root,
            key_path: cfg.key.as_ref().map(join),
            time_path: join(&cfg.event_time),
            time_format: cfg.time_format,
            wide_paths,
            narrow,
        }
    }

    /// The configured path a slot stands for, for messages.
    fn slot_path(&self, slot: Slot) -> String {
        match slot {
            Slot::Field(i) => self.wide_paths[i as usize].clone(),
            Slot::Time => self.time_path.clone(),
            Slot::Key => self.key_path.clone().unwrap_or_default(),
            Slot::Parameter | Slot::Value => self.wide_paths[0].clone(),
        }
    }

    /// Decodes one event. Numeric values are appended to `values` as `(field id, value)`
    /// (cleared first); narrow parameters are interned in `fields`.
    ///
    /// `message_key` is the Kafka message key, used when the pipeline maps no key field.
    ///
    /// # Errors
    /// [`DecodeError`] naming the field that is missing or malformed.
    pub fn decode<'a>(
        &self,
        bytes: &'a [u8],
        message_key: Option<&'a [u8]>,
        fields: &mut FieldTable,
        values: &mut Vec<(u16, f64)>,
    ) -> Result<Event<'a>, DecodeError> {
        values.clear();
        let mut scratch = Scratch::default();
        let mut de = serde_json::Deserializer::from_slice(bytes);
        EntrySeed {
            node: Some(&self.root),
            slots: &[],
            scratch: &mut scratch,
            values,
            time_format: self.time_format,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| DecodeError::InvalidJson(e.to_string()))?;

        let key = match (scratch.key, &self.key_path) {
            (Some(k), _) => k,
            (None, Some(p)) => return Err(DecodeError::MissingKey(p.clone())),
            (None, None) => match message_key {
                Some(k) if !k.is_empty() => String::from_utf8_lossy(k),
                _ => Cow::Borrowed("default"),
            },
        };
        let event_time_ms = match scratch.time {
            Some(Ok(t)) => t,
            Some(Err(reason)) => {
                return Err(DecodeError::BadEventTime {
                    path: self.time_path.clone(),
                    reason,
                });
            }
            None => return Err(DecodeError::MissingEventTime(self.time_path.clone())),
        };
        if let Some(slot) = scratch.duplicate {
            return Err(DecodeError::DuplicateMember(self.slot_path(slot)));
        }
        if let Some(slot) = scratch.not_numeric {
            return Err(DecodeError::NotNumeric(self.slot_path(slot)));
        }
        if let Some(slot) = scratch.non_finite {
            return Err(DecodeError::NonFinite(self.slot_path(slot)));
        }
        if self.narrow {
            let (Some(p), Some(v)) = (scratch.parameter, scratch.value) else {
                return Err(DecodeError::NoFields(self.wide_paths.join(", ")));
            };
            let id = fields
                .intern(&p)
                .ok_or_else(|| DecodeError::UnknownParameter(p.to_string()))?;
            values.push((id, v));
        } else if values.is_empty() {
            return Err(DecodeError::NoFields(self.wide_paths.join(", ")));
        }
        Ok(Event { key, event_time_ms })
    }
}

/// Deserialises one JSON value at a trie position: recurses into mapped object members,
/// fills slots from scalars, skips the rest.
struct EntrySeed<'n, 's, 'de> {
    node: Option<&'n Node>,
    slots: &'n [Slot],
    scratch: &'s mut Scratch<'de>,
    values: &'s mut Vec<(u16, f64)>,
    time_format: TimeFormat,
}

impl<'n, 's, 'de> EntrySeed<'n, 's, 'de> {
    /// Records a second occurrence of a slot already filled.
    fn seen_before(&mut self, slot: Slot) -> bool {
        let before = match slot {
            Slot::Key => self.scratch.key.is_some(),
            Slot::Time => self.scratch.time.is_some(),
            Slot::Parameter => self.scratch.parameter.is_some(),
            Slot::Value => self.scratch.value.is_some(),
            Slot::Field(i) => self.values.iter().any(|(f, _)| *f == i),
        };
        if before {
            self.scratch.duplicate.get_or_insert(slot);
        }
        before
    }

    fn number(mut self, v: f64, as_int: Option<i64>) {
        for &slot in self.slots {
            if self.seen_before(slot) {
                continue;
            }
            match slot {
                Slot::Key => {
                    self.scratch.key = Some(Cow::Owned(
                        as_int.map_or_else(|| v.to_string(), |i| i.to_string()),
                    ))
                }
                Slot::Time => {
                    self.scratch.time = Some(time::from_number(v, as_int, self.time_format))
                }
                Slot::Field(i) => self.values.push((i, v)),
                Slot::Value => self.scratch.value = Some(v),
                Slot::Parameter => self.scratch.parameter = Some(Cow::Owned(v.to_string())),
            }
        }
    }

    fn string(mut self, s: Cow<'de, str>) {
        for &slot in self.slots {
            if self.seen_before(slot) {
                continue;
            }
            match slot {
                Slot::Key => self.scratch.key = Some(s.clone()),
                Slot::Parameter => self.scratch.parameter = Some(s.clone()),
                Slot::Time => self.scratch.time = Some(time::from_str(&s, self.time_format)),
                Slot::Field(i) => match s.trim().parse::<f64>() {
                    Ok(v) if v.is_finite() => self.values.push((i, v)),
                    Ok(_) => self.scratch.non_finite = Some(slot),
                    Err(_) => self.scratch.not_numeric = Some(slot),
                },
                Slot::Value => match s.trim().parse::<f64>() {
                    Ok(v) if v.is_finite() => self.scratch.value = Some(v),
                    Ok(_) => self.scratch.non_finite = Some(slot),
                    Err(_) => self.scratch.not_numeric = Some(slot),
                },
            }
        }
    }

    fn other(self) {
        for &slot in self.slots {
            match slot {
                Slot::Field(_) | Slot::Value => self.scratch.not_numeric = Some(slot),
                Slot::Time => self.scratch.time = Some(Err("expected a number or a string".into())),
                Slot::Key | Slot::Parameter => {}
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v as f64, Some(v));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v as f64, i64::try_from(v).ok());
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.number(v, None);
        Ok(())
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.string(Cow::Borrowed(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.string(Cow::Owned(v.to_string()));
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.other();
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.other();
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.other();
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some(node) = self.node else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            self.other();
            return Ok(());
        };
        while let Some(hit) = map.next_key_seed(KeyMatcher(node))? {
            match hit {
                Some(i) => {
                    let entry = &node.entries[i].1;
                    map.next_value_seed(EntrySeed {
                        node: (!entry.children.entries.is_empty()).then_some(&entry.children),
                        slots: &entry.slots,
                        scratch: &mut *self.scratch,
                        values: &mut *self.values,
                        time_format: self.time_format,
                    })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !self.slots.is_empty() {
            self.other();
        }
        Ok(())
    }
}

/// Matches an object member name against the trie without allocating.
struct KeyMatcher<'n>(&'n Node);

impl<'de> DeserializeSeed<'de> for KeyMatcher<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyMatcher<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.entries.iter().position(|(k, _)| k == v))
    }
}

#[cfg(test)]
mod tests;
