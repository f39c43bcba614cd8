//! OpenTelemetry traces of Vigil's binaries: the OTLP/gRPC exporter, the sampler, and the W3C
//! trace context (`traceparent`, `tracestate`) read from and written to Kafka headers and gRPC
//! metadata.
//!
//! Off unless an OTLP endpoint is configured with the standard variables
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`; `OTEL_SDK_DISABLED=true`
//! or `OTEL_TRACES_EXPORTER=none` turn it off again). The other standard variables are the
//! OpenTelemetry SDK's: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the resource),
//! `OTEL_EXPORTER_OTLP_*_{HEADERS,TIMEOUT}` (the exporter), `OTEL_BSP_*` (the batch span
//! processor), `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (the sampler).
//!
//! Spans are `tracing` spans of Vigil's own crates (targets `vigil*`), exported through
//! `tracing-opentelemetry`; spans of libraries (kube, tonic, hyper) are not exported. The
//! export runs on its own one-thread Tokio runtime, so a binary without a runtime (`vigil`)
//! and one with (the operator) export alike and a slow collector never blocks their threads:
//! the batch span processor drops spans when its queue (`OTEL_BSP_MAX_QUEUE_SIZE`, 2,048) is
//! full.
//!
//! Sampling is the SDK's: `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`, so a span
//! under a remote parent follows the caller's `sampled` flag). The detector also chooses which
//! source records it reads trace context from at all (`VIGIL_TRACE_RECORD_RATIO`, see
//! `vigil_detector::traces`): reading a record's headers is what tracing costs the data path.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SdkTracerProvider, ShouldSample};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace-context header and metadata key.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C trace-state header and metadata key.
pub const TRACESTATE: &str = "tracestate";

/// Share of source records (0..1) whose trace context the detector reads (see
/// `vigil_detector::traces`).
pub const RECORD_RATIO_ENV: &str = "VIGIL_TRACE_RECORD_RATIO";

/// The variables the operator passes on from its own environment to the detector and
/// model-server pods it renders, so one setting (the chart's `tracing` values) traces the
/// whole install. `OTEL_SERVICE_NAME` is not among them: each binary names itself.
pub const FORWARDED_ENV: &[&str] = &[
    RECORD_RATIO_ENV,
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
];

/// The [`FORWARDED_ENV`] variables set in this process's environment, in that order.
pub fn forwarded_env() -> Vec<(String, String)> {
    FORWARDED_ENV
        .iter()
        .filter_map(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| ((*k).to_string(), v))
        })
        .collect()
}

/// A binary's tracing defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    /// `service.name` when `OTEL_SERVICE_NAME` (or the resource attributes) does not say.
    pub service_name: &'static str,
}

impl Defaults {
    /// The detector (`vigil run`).
    pub const DETECTOR: Self = Self {
        service_name: "vigil-detector",
    };
    /// The model server.
    pub const MODEL_SERVER: Self = Self {
        service_name: "vigil-model-server",
    };
    /// The operator.
    pub const OPERATOR: Self = Self {
        service_name: "vigil-operator",
    };
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static SAMPLER: OnceLock<Sampler> = OnceLock::new();

/// Whether traces are exported (an OTLP endpoint is configured and the exporter started).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the standard variables ask for traces: an OTLP endpoint is set, and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`.
pub fn requested() -> bool {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled
        && (var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some())
}

/// The sampler of the standard variables, as the SDK reads them (kept here too, so that
/// [`keeps`] can ask it before a span exists).
fn sampler() -> Sampler {
    let set = std::env::var("OTEL_TRACES_SAMPLER").is_ok_and(|v| !v.trim().is_empty());
    let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG")
        .ok()
        .and_then(|a| a.trim().parse::<f64>().ok())
        .filter(|r| (0.0..=1.0).contains(r));
    let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
    let ratio = || arg.unwrap_or(1.0);
    match (set, name.trim()) {
        (false, _) => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        (true, "always_on") => Sampler::AlwaysOn,
        (true, "always_off") => Sampler::AlwaysOff,
        (true, "traceidratio") => Sampler::TraceIdRatioBased(ratio()),
        (true, "parentbased_always_off") => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        (true, "parentbased_traceidratio") => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio())))
        }
        // parentbased_always_on and anything unknown: the SDK's default.
        (true, _) => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    }
}

/// What [`start`] set up; shutting it down (drop) flushes the spans still queued.
pub(crate) struct Exporter {
    provider: SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("OpenTelemetry: flushing the last spans failed: {e}");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Starts the OTLP exporter and returns it with the tracer for the `tracing` layer; `None`
/// when traces are not [`requested`] or the exporter cannot be built (said on stderr: logging
/// is not up yet).
pub(crate) fn start(defaults: Defaults) -> Option<(Exporter, opentelemetry_sdk::trace::SdkTracer)> {
    if !requested() {
        return None;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("OpenTelemetry: no runtime for the OTLP exporter, traces are off: {e}");
            return None;
        }
    };
    // The tonic channel is created inside the runtime, so the batch processor's thread can
    // export through it.
    let exporter = {
        let _in = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
    };
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            eprintln!("OpenTelemetry: the OTLP exporter could not be built, traces are off: {e}");
            return None;
        }
    };
    let sampler = sampler();
    let _ = SAMPLER.set(sampler.clone());
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err()
        && !std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="))
    {
        resource = resource.with_service_name(defaults.service_name);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("vigil");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    Some((
        Exporter {
            provider,
            runtime: Some(runtime),
        },
        tracer,
    ))
}

/// Header or metadata pairs (`traceparent`, `tracestate`) to read a trace context from.
struct Pairs<'a>(&'a [(&'a str, &'a str)]);

impl Extractor for Pairs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// The remote span context of a W3C `traceparent` (and `tracestate`), when it parses.
pub fn remote_context(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    let pairs = [
        (TRACEPARENT, traceparent),
        (TRACESTATE, tracestate.unwrap_or("")),
    ];
    let n = if tracestate.is_some() { 2 } else { 1 };
    let cx = TraceContextPropagator::new().extract(&Pairs(&pairs[..n]));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Whether this process's sampler keeps a span named `name` of kind `kind` under `parent`
/// (false when traces are off). Asked before a span is created on a hot path, so that records
/// whose trace is not kept cost no span at all.
pub fn sampled(parent: &Context, name: &str, kind: SpanKind) -> bool {
    if !enabled() {
        return false;
    }
    let Some(s) = SAMPLER.get() else {
        return false;
    };
    let trace_id = parent.span().span_context().trace_id();
    if trace_id == TraceId::INVALID {
        return false;
    }
    let r = s.should_sample(Some(parent), trace_id, name, &kind, &[], &[]);
    r.decision == SamplingDecision::RecordAndSample
}

/// Whether this process's sampler keeps the trace of a W3C `traceparent`, decided from the
/// text alone: for the ratio, always-on and always-off samplers no context is built and
/// nothing is allocated, so a hot path asks this for every record before doing anything else
/// with its trace context (a parent-based sampler needs the parent's flag: the context is
/// parsed then). False when traces are off or the text is not a `traceparent`.
pub fn keeps(traceparent: &str) -> bool {
    if !enabled() {
        return false;
    }
    let Some(s) = SAMPLER.get() else {
        return false;
    };
    let b = traceparent.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return false;
    }
    let Ok(trace_id) = TraceId::from_hex(&traceparent[3..35]) else {
        return false;
    };
    if trace_id == TraceId::INVALID {
        return false;
    }
    let decision = match s {
        Sampler::ParentBased(_) => {
            let Some(cx) = remote_context(traceparent, None) else {
                return false;
            };
            s.should_sample(Some(&cx), trace_id, "", &SpanKind::Consumer, &[], &[])
                .decision
        }
        _ => {
            s.should_sample(None, trace_id, "", &SpanKind::Consumer, &[], &[])
                .decision
        }
    };
    decision == SamplingDecision::RecordAndSample
}

/// Makes `parent` the parent of `span` and records the trace id in the span's `trace_id`
/// field (when it has one), so JSON log lines inside the span carry it.
pub fn set_parent(span: &tracing::Span, parent: Context) {
    let trace_id = parent.span().span_context().trace_id();
    let _ = span.set_parent(parent);
    span.record("trace_id", tracing::field::display(trace_id));
}

/// Records the trace id of `span` (a root span: the id comes from the sampler's new trace) in
/// its `trace_id` field; nothing when traces are off.
pub fn record_trace_id(span: &tracing::Span) {
    if !enabled() {
        return;
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// The W3C `traceparent` of `span`, to write into a Kafka header or gRPC metadata; `None`
/// when traces are off or the span is not sampled.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Adds an OpenTelemetry link from `span` to the span of `traceparent` (another trace, or
/// another part of this one).
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    if let Some(cx) = remote_context(traceparent, None) {
        span.add_link(cx.span().span_context().clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_parses_and_a_malformed_one_does_not() {
        let cx = remote_context(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            None,
        )
        .expect("valid traceparent");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(remote_context(bad, None).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn without_the_variables_the_sampler_follows_the_parent() {
        // Only the unset case: the process environment is shared by the tests.
        if std::env::var("OTEL_TRACES_SAMPLER").is_ok() {
            return;
        }
        let s = sampler();
        let decide = |tp: &str| {
            let cx = remote_context(tp, None).unwrap();
            let id = cx.span().span_context().trace_id();
            s.should_sample(Some(&cx), id, "x", &SpanKind::Consumer, &[], &[])
                .decision
        };
        let id = "0af7651916cd43dd8448eb211c80319c";
        assert_eq!(
            decide(&format!("00-{id}-b7ad6b7169203331-01")),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(
            decide(&format!("00-{id}-b7ad6b7169203331-00")),
            SamplingDecision::Drop
        );
    }
}
