//! The trace context through `tracing` spans with the exporter on (an OTLP endpoint that
//! accepts nothing: exports fail in the background, spans are still made): a span under a
//! remote parent continues its trace, its `traceparent` says so, and the sampler's decision is
//! the one [`vigil_telemetry::trace::sampled`] predicts.

use vigil_telemetry::logging::{self, LogFormat};
use vigil_telemetry::trace::{self as otel, Defaults, SpanKind};

/// Runs [`in_a_process_with_the_exporter_on`] in a child process with the OTLP variables set
/// (the environment of this process is not touched).
#[test]
fn a_span_under_a_remote_parent_continues_its_trace() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "in_a_process_with_the_exporter_on",
            "--nocapture",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("OTEL_TRACES_SAMPLER_ARG")
        .env_remove("OTEL_SDK_DISABLED")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by a_span_under_a_remote_parent_continues_its_trace in a child process"]
fn in_a_process_with_the_exporter_on() {
    let _guard = logging::init(LogFormat::Json, "warn", Defaults::DETECTOR);
    assert!(otel::enabled());

    // The default sampler follows the producer's flag: sampled (01) and not (00).
    let kept = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let dropped = "00-5cf92f3577b34da6ffffffffffffffff-00f067aa0ba902b8-00";
    let parent = otel::remote_context(kept, None).unwrap();
    assert!(otel::sampled(&parent, "vigil.record", SpanKind::Consumer));
    assert!(otel::keeps(kept));
    let span =
        tracing::info_span!(target: "vigil_test", "vigil.test", trace_id = tracing::field::Empty);
    otel::set_parent(&span, parent);
    let tp = otel::traceparent(&span).expect("a sampled span has a traceparent");
    assert_eq!(&tp[..36], "00-4bf92f3577b34da6a3ce929d0e0e4736-", "{tp}");
    assert_ne!(
        &tp[36..52],
        "00f067aa0ba902b7",
        "the span's own id, not the parent's"
    );
    assert!(tp.ends_with("-01"), "{tp}");

    let parent = otel::remote_context(dropped, None).unwrap();
    assert!(!otel::sampled(&parent, "vigil.record", SpanKind::Consumer));
    assert!(!otel::keeps(dropped));
    assert!(!otel::keeps("00-not-a-traceparent"));
    let span =
        tracing::info_span!(target: "vigil_test", "vigil.test", trace_id = tracing::field::Empty);
    otel::set_parent(&span, parent);
    assert_eq!(otel::traceparent(&span), None, "not sampled");
}
