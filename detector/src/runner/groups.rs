//! Entity groups in the detector (`spec.groups`, see [`vigil_core::groups`]): a pipeline with
//! groups runs two loops in one process, each a full runner with its own consumer group:
//! - the **key stage** reads the source topics; besides its own outputs it sends each fired
//!   key window's partials to the group topic (keyed by group, so a group's partials meet on
//!   one partition) and, every [`PROGRESS_EVERY`], its partitions' watermarks to every
//!   partition of the group topic ([`GroupLink`]);
//! - the **group stage** ([`group_stage_pipeline`]) reads the group topic in the consumer
//!   group `<consumerGroup>.groups`, so the groups are spread over the detectors like the
//!   keys, and fires group windows through the same sinks (alerts, KPIs, KPI store, receivers).
//!
//! Both stages' records go through the same delivery tracking as every output: offsets are
//! committed only once the partials of the windows they fired are acknowledged.

use std::time::Duration;

use rdkafka::ClientConfig;
use vigil_api::v1alpha1::{StartOffset, StreamPipeline};

use crate::sink::{Origin, Sinks};
use crate::source::admin;

/// How often the key stage reports its watermarks to the group stage (wall clock).
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The key stage's side of the group topic.
#[derive(Debug)]
pub(super) struct GroupLink {
    /// The group topic.
    pub topic: String,
    /// Its partition count.
    pub partitions: i32,
    /// Every source partition's engine partition id.
    pub sources: Vec<i32>,
    /// When progress was last sent (epoch ms).
    pub last_progress_ms: i64,
}

impl GroupLink {
    /// Creates the group topic when missing (with as many partitions as the source has) and
    /// reads the source's partitions.
    ///
    /// # Errors
    /// The metadata or topic creation failed (message for [`super::RunError::Groups`]).
    pub fn open(
        cluster: &ClientConfig,
        source_topics: &[String],
        group_topic: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        let ids = crate::source::PartitionIds::new(source_topics.to_vec());
        let mut sources = Vec::new();
        for t in source_topics {
            let parts = admin::high_watermarks(cluster, t, timeout)
                .map_err(|e| format!("source topic {t}: {e}"))?;
            sources.extend(
                parts
                    .iter()
                    .filter_map(|(p, _)| ids.engine_partition(t, *p)),
            );
        }
        sources.sort_unstable();
        let count = i32::try_from(sources.len().max(1)).unwrap_or(i32::MAX);
        admin::ensure_topics(cluster, &[(group_topic, count)])
            .map_err(|e| format!("group topic {group_topic}: {e}"))?;
        let partitions = admin::high_watermarks(cluster, group_topic, timeout)
            .map_err(|e| format!("group topic {group_topic}: {e}"))?
            .len();
        Ok(Self {
            topic: group_topic.to_string(),
            partitions: i32::try_from(partitions.max(1)).unwrap_or(1),
            sources,
            last_progress_ms: 0,
        })
    }

    /// Sends the group records of a step (partials keyed by group).
    pub fn send_records(
        &self,
        sinks: &Sinks,
        records: &[(Option<String>, Vec<u8>)],
        now_ms: i64,
        origin: Origin<'_>,
    ) {
        for (key, value) in records {
            sinks.send_group_record(
                &self.topic,
                None,
                key.as_deref().map(str::as_bytes),
                value,
                now_ms,
                origin,
            );
        }
    }

    /// Sends the key stage's progress to every partition of the group topic, at most every
    /// [`PROGRESS_EVERY`] unless `force`.
    pub fn send_progress(
        &mut self,
        sinks: &Sinks,
        engine: &vigil_core::engine::Engine,
        now_ms: i64,
        force: bool,
        origin: Origin<'_>,
    ) {
        if !force && now_ms - self.last_progress_ms < PROGRESS_EVERY.as_millis() as i64 {
            return;
        }
        self.last_progress_ms = now_ms;
        for value in engine.group_progress(&self.sources) {
            for p in 0..self.partitions {
                sinks.send_group_record(&self.topic, Some(p), None, &value, now_ms, origin);
            }
        }
    }
}

/// The StreamPipeline the group stage runs: the group topic as its only source, read from
/// the beginning in the consumer group `<consumerGroup>.groups`; no checkpoints (its state is
/// rebuilt by re-reading the group topic from the committed offsets, which never pass a
/// pending group window's contributions) and no partitioner.
pub fn group_stage_pipeline(p: &StreamPipeline, group_topic: &str) -> StreamPipeline {
    let mut g = p.clone();
    let k = &mut g.spec.source.kafka;
    k.topics = vec![group_topic.to_string()];
    k.consumer_group = format!("{}.groups", k.consumer_group);
    k.start_offset = StartOffset::Earliest;
    k.partitioner = None;
    g.spec.checkpointing = None;
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_api::manifest::Manifests;

    #[test]
    fn the_group_stage_reads_the_group_topic_in_its_own_consumer_group() {
        let mut m = Manifests::default();
        m.add_str(
            "p",
            "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {name: p}\nspec:\n  source: {kafka: {topics: [t], consumerGroup: g, startOffset: Latest, partitioner: Murmur2}}\n  format: {keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}\n  windows: [{name: w, size: 1s}]\n  sinks: {alerts: {topic: a}}\n  checkpointing: {location: file:///tmp/x}\n  enrichment: {configMap: c}\n  groups: {by: [{name: region, attribute: region}]}\n",
        )
        .unwrap();
        let g = group_stage_pipeline(&m.pipelines[0], "p.groups");
        let k = &g.spec.source.kafka;
        assert_eq!(
            (k.topics.as_slice(), k.consumer_group.as_str()),
            (&["p.groups".to_string()][..], "g.groups")
        );
        assert_eq!(k.start_offset, StartOffset::Earliest);
        assert!(k.partitioner.is_none() && g.spec.checkpointing.is_none());
        assert_eq!(g.spec.sinks, m.pipelines[0].spec.sinks);
    }
}
