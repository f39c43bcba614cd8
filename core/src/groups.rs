//! Entity groups (`spec.groups`): what a grouping is, and the records detectors exchange so a
//! group's windows span partitions and detectors.
//!
//! Two stages, as a keyed aggregation over a repartition topic in Kafka Streams or a `keyBy`
//! in Flink:
//! - the **key stage** (the engine over the source topic) sends, for every fired window of a
//!   key and every grouping, a [`Partial`]: the key's merged aggregates of that window, keyed by
//!   its group `<grouping>/<value>` (the value is the key's reference-data attribute, or the
//!   grouping's default). A late event that updates a fired key window sends the window again
//!   (`update`), and it replaces the key's earlier contribution. With the partials, each owner
//!   of a source partition sends its [`Progress`] (the partition's watermark per tier) to every
//!   partition of the topic;
//! - the **group stage** (the engine in [`Stage::Groups`] over the group topic, see
//!   `engine/groups.rs`) keeps the contributions of each open group window by member key and
//!   fires a group window once every source partition's watermark passed its end: its
//!   features are the members' aggregates merged (so counts and sums add, means and stddev
//!   combine exactly, quantiles come from the merged sketches), `keys.count` is the number of
//!   member keys, and the composite KPIs are evaluated over them. Allowed lateness applies as
//!   for keys: an updated contribution re-fires the group window until its lateness passed.
//!
//! # Record format
//! Value: one version byte ([`FORMAT_VERSION`]) then a [`GroupRecord`] in postcard 1.x (the
//! snapshot encoding). Key: the group (partials) or empty (progress). Internal to Vigil:
//! both stages run the same build during a roll only when the version matches; a record of
//! another version is dead-lettered by the group stage with reason `decode`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::features::Agg;
use crate::window::Watermark;

/// Version byte of the group topic's records.
pub const FORMAT_VERSION: u8 = 1;

/// Name of the pseudo-field of group windows counting member keys: `keys.count`.
pub const KEYS_FIELD: &str = "keys";

/// Name of the variable and feature prefix of composite KPIs: `kpi.<name>`.
pub const KPI_PREFIX: &str = "kpi";

/// Default group of keys without the grouping's attribute.
pub const DEFAULT_GROUP: &str = "unknown";

/// Which stage an engine runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stage {
    /// Events of the source topics, per key.
    #[default]
    Keys,
    /// Partials of the group topic, per group.
    Groups,
}

/// `spec.groups`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupsConfig {
    /// The group topic.
    pub topic: String,
    /// The groupings.
    pub by: Vec<Grouping>,
    /// Composite KPIs: (name, CEL source).
    pub kpis: Vec<(String, String)>,
}

/// One grouping: keys grouped by a reference-data attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    /// `spec.groups.by[].name`.
    pub name: String,
    /// The attribute whose value is the group.
    pub attribute: String,
    /// Group of keys without the attribute.
    pub default: String,
}

impl Grouping {
    /// The group key of a key with `attributes`: `<grouping>/<value>`.
    pub fn group_of(&self, attributes: Option<&BTreeMap<String, String>>) -> String {
        let value = attributes
            .and_then(|a| a.get(&self.attribute))
            .filter(|v| !v.is_empty())
            .map_or(self.default.as_str(), String::as_str);
        format!("{}/{value}", self.name)
    }
}

/// Whether group key `group` belongs to grouping `grouping`.
pub fn in_grouping(group: &str, grouping: &str) -> bool {
    group
        .strip_prefix(grouping)
        .is_some_and(|r| r.starts_with('/'))
}

/// One record of the group topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GroupRecord {
    /// A key's fired window, for its group.
    Partial(Partial),
    /// A source partition's event-time progress.
    Progress(Progress),
}

/// A key's contribution to a group window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Partial {
    /// `<grouping>/<value>`.
    pub group: String,
    /// The member key.
    pub member: String,
    /// Tier name.
    pub tier: String,
    /// Window start, epoch ms.
    pub start: i64,
    /// The member's aggregates of the window, by field name (fields with events only).
    pub aggs: Vec<(String, Agg)>,
    /// A re-emission after a late event (replaces the member's earlier contribution).
    pub update: bool,
}

/// A source partition's watermarks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// The source partition (the engine's partition id).
    pub partition: i32,
    /// Every source partition (engine partition ids): a group window fires once each one
    /// reported a watermark past its end.
    pub sources: Vec<i32>,
    /// Watermark per tier name.
    pub watermarks: Vec<(String, Watermark)>,
}

impl GroupRecord {
    /// The record's value bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![FORMAT_VERSION];
        // Encoding plain data cannot fail.
        v.extend(postcard::to_allocvec(self).unwrap_or_default());
        v
    }

    /// Reads a record.
    ///
    /// # Errors
    /// Another version, or bytes that do not decode.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.split_first() {
            Some((&FORMAT_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|e| format!("group record does not decode: {e}"))
            }
            Some((v, _)) => Err(format!(
                "group record format version {v}, this build reads {FORMAT_VERSION}"
            )),
            None => Err("empty group record".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_other_versions_are_refused() {
        let mut a = Agg::new(true);
        a.add(1, 2.5);
        a.add(2, 3.5);
        let r = GroupRecord::Partial(Partial {
            group: "region/eu".into(),
            member: "k1".into(),
            tier: "fast".into(),
            start: 30_000,
            aggs: vec![("v".into(), a)],
            update: false,
        });
        let bytes = r.encode();
        let GroupRecord::Partial(p) = GroupRecord::decode(&bytes).unwrap() else {
            panic!("not a partial")
        };
        assert_eq!(
            (p.group.as_str(), p.member.as_str(), p.start),
            ("region/eu", "k1", 30_000)
        );
        assert_eq!(
            p.aggs[0]
                .1
                .features(1000)
                .get(vigil_api::v1alpha1::Feature::Sum),
            6.0
        );
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(
            GroupRecord::decode(&other)
                .unwrap_err()
                .contains("version 9")
        );
        assert!(GroupRecord::decode(&bytes[..3]).is_err());
    }

    #[test]
    fn groups_come_from_the_attribute_or_the_default() {
        let g = Grouping {
            name: "region".into(),
            attribute: "region".into(),
            default: DEFAULT_GROUP.into(),
        };
        let attrs: BTreeMap<String, String> = [("region".to_string(), "eu".to_string())].into();
        assert_eq!(g.group_of(Some(&attrs)), "region/eu");
        assert_eq!(g.group_of(Some(&BTreeMap::new())), "region/unknown");
        assert_eq!(g.group_of(None), "region/unknown");
        assert!(in_grouping("region/eu", "region"));
        assert!(!in_grouping("regions/eu", "region"));
    }
}
