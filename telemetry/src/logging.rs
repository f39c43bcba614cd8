//! Log output of Vigil's binaries (detector, model server, operator): human-readable text on a
//! terminal, or JSON lines for log collectors, chosen with `--log-format text|json` or the
//! environment variable [`LOG_FORMAT_ENV`]. Logs go to stderr; the level filter is `RUST_LOG`
//! (tracing-subscriber's `EnvFilter` syntax), else the binary's default.
//!
//! A JSON line is tracing-subscriber's JSON format: `timestamp` (RFC 3339), `level`,
//! `target`, `fields` (the event's message and fields) and, inside spans, `span` and `spans`
//! (their names and fields).

/// Environment variable naming the log format (`text` or `json`); the operator sets it on the
/// detector and model-server containers to its own format.
pub const LOG_FORMAT_ENV: &str = "VIGIL_LOG_FORMAT";

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text lines, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The value as written on a command line or in [`LOG_FORMAT_ENV`].
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// What [`init`] started; keep it until the process ends: dropping it flushes the spans still
/// queued for the OTLP exporter.
#[must_use = "dropping it stops the trace exporter"]
pub struct Guard {
    _exporter: Option<crate::trace::Exporter>,
}

/// Installs the global subscriber: logs in `format`, filtered by `RUST_LOG` or else
/// `default_filter`, and, when an OTLP endpoint is configured ([`crate::trace`]), the spans
/// of Vigil's crates exported as OpenTelemetry traces (with `trace`'s `defaults`). The two
/// have separate filters: `RUST_LOG=warn` does not turn traces off.
pub fn init(format: LogFormat, default_filter: &str, defaults: crate::trace::Defaults) -> Guard {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        // Colours only on a terminal: log files and CI output stay plain text.
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    };
    let (exporter, otel) = match crate::trace::start(defaults) {
        Some((exporter, tracer)) => {
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_threads(false)
                // Vigil's spans only, INFO and above; the level hint keeps the global
                // maximum level where the log filter puts it, so disabled debug/trace logs of
                // hot paths (librdkafka's through `log`) stay a static check.
                .with_filter(
                    tracing_subscriber::filter::filter_fn(|m| {
                        m.is_span()
                            && m.target().starts_with("vigil")
                            && *m.level() <= tracing::Level::INFO
                    })
                    .with_max_level_hint(tracing::Level::INFO),
                );
            (Some(exporter), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    Guard {
        _exporter: exporter,
    }
}
