//! `vigil`: run a detector against Kafka, replay files into a topic, score a series offline.

mod bench;
mod demo;
mod replay;
mod run;
mod score;
mod test_rules;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Streaming anomaly detection: the same StreamPipeline and DetectionRule YAML locally and
/// in Kubernetes.
#[derive(Parser)]
#[command(name = "vigil", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format (`text` or `json`), on stderr.
    #[arg(long, global = true, env = vigil_telemetry::logging::LOG_FORMAT_ENV, value_enum, default_value_t)]
    log_format: vigil_telemetry::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Score one NAB-format CSV with the engine, in event-time order, without Kafka; writes
    /// `timestamp,value,anomaly_score` for every input row (row i scored from rows 0..=i).
    Score(score::ScoreArgs),
    /// Run a detector for a StreamPipeline and its DetectionRules against Kafka (or an
    /// embedded mock cluster) until SIGINT/SIGTERM; rule files reload without restart.
    Run(run::RunArgs),
    /// Write a NAB CSV or JSONL file to a topic with event times as Kafka timestamps.
    Replay(replay::ReplayArgs),
    /// Measure engine, raw consume and detector throughput and alert latency.
    Bench(bench::BenchArgs),
    /// Unit tests (`vigil test rules FILE...`).
    #[command(subcommand)]
    Test(TestCommand),
}

#[derive(Subcommand)]
enum TestCommand {
    /// Run DetectionRule unit tests, as `promtool test rules` does for Prometheus rules: input
    /// series through the engine, expected alerts and window features at given event times
    /// (docs/rule-tests.md). Exits 1 when a test fails.
    Rules(test_rules::TestRulesArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = vigil_telemetry::logging::init(
        cli.log_format,
        "info,rdkafka=warn",
        vigil_telemetry::trace::Defaults::DETECTOR,
    );
    match cli.command {
        Command::Score(a) => score::score(&a),
        Command::Run(a) => run::run(&a),
        Command::Replay(a) => replay::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Test(TestCommand::Rules(a)) => {
            if test_rules::run(&a)? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
    }
}

/// Loads manifests from files (pipeline and rules may be in the same or separate files).
pub fn load_manifests(paths: &[PathBuf]) -> anyhow::Result<vigil_api::manifest::Manifests> {
    Ok(vigil_detector::supervisor::read_manifests(paths)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_api::contract::detector::{BINARY, DetectorArgs};

    /// The command line the operator renders into detector pods parses with this binary's own
    /// parser into the same arguments (one contract, two sides).
    #[test]
    fn operator_rendered_detector_command_parses() {
        let mut rendered = DetectorArgs::in_pod();
        rendered.bootstrap_servers = Some("kafka:9092".into());
        rendered.group_instance_id = Some("nab-detector-0".into());
        let argv = std::iter::once(BINARY.to_string()).chain(rendered.to_args());
        let Command::Run(parsed) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not the run subcommand");
        };
        assert_eq!(parsed.detector, rendered);
    }
}
