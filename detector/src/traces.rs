//! The detector's spans of one end-to-end trace (OpenTelemetry, W3C trace context; see
//! `vigil_telemetry::trace` for the exporter and the standard variables):
//!
//! 1. `vigil.record` (consumer): a record whose Kafka headers carry a `traceparent` the
//!    sampler keeps (by default: the producer sampled it), as a child of the producer's span.
//!    Only one record in `round(1 / VIGIL_TRACE_RECORD_RATIO)` (by offset; default 1 in 1,000)
//!    has its headers read at all: librdkafka parses a record's headers (allocating) when they
//!    are first read, which cost the data path about a quarter of its throughput when every
//!    record was read and every record carried a `traceparent` (docs/observability.md).
//! 2. `vigil.window.fire`: each window holding such a record when it fires (at that record or a
//!    later one, or a timer), as a child of the record's span; the engine carries the trace
//!    ([`vigil_core::engine::Engine::process_traced`]).
//! 3. `vigil.model.batch` (client): a model server request holding such windows, as a child of
//!    the first one's firing (links to windows of other traces); its `traceparent` goes to the
//!    model server in the gRPC metadata, where `vigil.model.infer` continues it.
//! 4. `vigil.alert.produce` (producer): the alert record, as a child of the firing (rule
//!    alerts) or the batch (model alerts); its `traceparent` is written into the record's
//!    headers and the CloudEvent's `traceparent` extension, so the alert's consumer continues
//!    the same trace.

use rdkafka::Message as _;
use rdkafka::message::{BorrowedMessage, Headers as _};
use tracing::field::Empty;
use vigil_core::TraceParent;
use vigil_core::engine::Outputs;
use vigil_core::model::ModelInput;
use vigil_core::rules::alert::Alert;
use vigil_telemetry::trace::{self as otel, TRACEPARENT, TRACESTATE};

/// Default of `VIGIL_TRACE_RECORD_RATIO`: 1 record in 1,000 has its trace context read. At
/// 1 in 100, a topic whose every record carried a sampled `traceparent` cost the detector about
/// 10 % of its events per CPU-second (each traced record makes about three spans); at 1 in
/// 1,000 it stays within the 3 % budget (docs/observability.md has the measurements).
pub const DEFAULT_RECORD_RATIO: f64 = 0.001;

/// Every how many offsets a record's trace context is read: `round(1 / ratio)` of
/// `VIGIL_TRACE_RECORD_RATIO` (default [`DEFAULT_RECORD_RATIO`]), 1 for a ratio of 1; 0 (none)
/// when traces are off or the ratio is 0. A value that is not a number in [0, 1] is refused
/// with a message naming the variable.
///
/// # Errors
/// The variable's value is not a number in [0, 1].
pub fn record_every() -> Result<u64, String> {
    if !otel::enabled() {
        return Ok(0);
    }
    let ratio = match std::env::var(otel::RECORD_RATIO_ENV) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| format!("{}={v:?} is not a ratio in [0, 1]", otel::RECORD_RATIO_ENV))?,
        _ => DEFAULT_RECORD_RATIO,
    };
    Ok(every(ratio))
}

fn every(ratio: f64) -> u64 {
    if ratio <= 0.0 {
        0
    } else {
        (1.0 / ratio).round().max(1.0) as u64
    }
}

/// Whether the record at `offset` has its trace context read, with [`record_every`]'s `every`.
#[inline]
pub fn reads(every: u64, offset: i64) -> bool {
    every != 0 && (offset as u64).is_multiple_of(every)
}

/// The `vigil.record` span of a traced record and the trace the engine carries for it; `None`
/// when the record carries no `traceparent` or its trace is not sampled.
pub fn record(m: &BorrowedMessage<'_>) -> Option<(tracing::Span, TraceParent)> {
    let headers = m.headers()?;
    let (mut traceparent, mut tracestate) = (None, None);
    for h in headers.iter() {
        let value = || h.value.and_then(|v| std::str::from_utf8(v).ok());
        if h.key.eq_ignore_ascii_case(TRACEPARENT) {
            traceparent = value();
        } else if h.key.eq_ignore_ascii_case(TRACESTATE) {
            tracestate = value();
        }
    }
    let traceparent = traceparent?;
    if !otel::keeps(traceparent) {
        return None;
    }
    let parent = otel::remote_context(traceparent, tracestate)?;
    let span = tracing::info_span!(
        "vigil.record",
        otel.kind = "consumer",
        trace_id = Empty,
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = m.topic(),
        messaging.destination.partition.id = m.partition(),
        messaging.kafka.offset = m.offset(),
    );
    otel::set_parent(&span, parent);
    let tp = otel::traceparent(&span)?;
    Some((span, tp.into()))
}

/// Opens a `vigil.window.fire` span for each traced window firing in `out` and re-parents the
/// firing's alerts and model inputs under it.
pub fn fire_spans(out: &mut Outputs) {
    let fired = std::mem::take(&mut out.fired_traces);
    for f in &fired {
        let Some(parent) = otel::remote_context(&f.trace, None) else {
            continue;
        };
        let span = tracing::info_span!(
            "vigil.window.fire",
            trace_id = Empty,
            vigil.window = %f.tier,
            vigil.key = %f.key,
            vigil.window.start = f.start,
            vigil.window.end = f.end,
        );
        otel::set_parent(&span, parent);
        let Some(tp) = otel::traceparent(&span) else {
            continue;
        };
        let tp: TraceParent = tp.into();
        let ours = |t: &Option<TraceParent>| t.as_ref() == Some(&f.trace);
        for a in out.alerts.iter_mut() {
            if ours(&a.trace) && *a.key == *f.key && a.window_end == f.end && a.window == f.tier {
                a.trace = Some(tp.clone());
            }
        }
        for i in out.model_inputs.iter_mut() {
            if ours(&i.trace) && *i.key == *f.key && i.window_end == f.end {
                i.trace = Some(tp.clone());
            }
        }
    }
    // Handed back empty, keeping its capacity.
    out.fired_traces = fired;
    out.fired_traces.clear();
}

/// The trace id part of a `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_id(traceparent: &str) -> &str {
    traceparent.get(3..35).unwrap_or(traceparent)
}

/// The `vigil.model.batch` span of a model server request holding traced windows: a child of
/// the first one, linked to those of other traces. `None` when none is traced.
pub fn batch_span(batch: &[ModelInput], role: &str) -> Option<tracing::Span> {
    if !otel::enabled() {
        return None;
    }
    let mut traced = batch.iter().filter_map(|i| i.trace.as_deref());
    let first = traced.next()?;
    let parent = otel::remote_context(first, None)?;
    let span = tracing::info_span!(
        "vigil.model.batch",
        otel.kind = "client",
        otel.status_code = Empty,
        trace_id = Empty,
        rpc.system = "grpc",
        rpc.service = "inference.GRPCInferenceService",
        rpc.method = "ModelInfer",
        vigil.model = %batch[0].contract.model,
        vigil.revision = %batch[0].version(),
        vigil.role = role,
        vigil.rows = batch.len(),
    );
    otel::set_parent(&span, parent);
    for other in traced {
        if trace_id(other) != trace_id(first) {
            otel::add_link(&span, other);
        }
    }
    Some(span)
}

/// After a batch: its windows of the batch span's trace continue under the batch span (their
/// alerts become its children).
pub fn after_batch(batch: &mut [ModelInput], span: &tracing::Span, ok: bool) {
    span.record("otel.status_code", if ok { "ok" } else { "error" });
    let Some(tp) = otel::traceparent(span) else {
        return;
    };
    let tp: TraceParent = tp.into();
    for i in batch.iter_mut() {
        if i.trace
            .as_deref()
            .is_some_and(|t| trace_id(t) == trace_id(&tp))
        {
            i.trace = Some(tp.clone());
        }
    }
}

/// The `vigil.alert.produce` span of a traced alert and the `traceparent` to write into its
/// record; `None` for an alert without a trace.
pub fn alert_span(alert: &Alert, topic: &str) -> Option<(tracing::Span, String)> {
    let trace = alert.trace.as_deref()?;
    let parent = otel::remote_context(trace, None)?;
    let span = tracing::info_span!(
        "vigil.alert.produce",
        otel.kind = "producer",
        trace_id = Empty,
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = topic,
        vigil.rule = %alert.rule,
        vigil.key = %alert.key,
        vigil.alert.status = ?alert.status,
    );
    otel::set_parent(&span, parent);
    let tp = otel::traceparent(&span).unwrap_or_else(|| trace.to_string());
    Some((span, tp))
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_record_in_round_one_over_the_ratio_is_read_by_offset() {
        use super::{every, reads};
        assert_eq!(every(0.01), 100);
        assert_eq!(every(1.0), 1);
        assert_eq!(every(0.3), 3);
        assert_eq!(every(0.0), 0);
        let read = |e| (0..1_000).filter(|o| reads(e, *o)).count();
        assert_eq!(read(every(0.01)), 10);
        assert_eq!(read(every(1.0)), 1_000);
        assert_eq!(read(every(0.0)), 0);
    }

    #[test]
    fn the_trace_id_of_a_traceparent() {
        assert_eq!(
            super::trace_id("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            "0af7651916cd43dd8448eb211c80319c"
        );
    }
}
