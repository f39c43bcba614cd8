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

/// Installs the global subscriber: `format`, filtered by `RUST_LOG` or else `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // Colours only on a terminal: log files and CI output stay plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
