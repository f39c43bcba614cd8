//! The demo side of `vigil run`: what `--print-alerts`, `--labels` and `--exit-when-idle`
//! print. An alert printer reads the alerts topic back as a separate consumer and prints one
//! line per alert, next to the labelled anomaly windows of a NAB series when `--labels` is
//! given; the end-of-run summary says how the firing alerts fall against those windows.
//! Nothing here takes part in detection.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use vigil_api::v1alpha1::TimeFormat;
use vigil_detector::runner::RunSummary;
use vigil_detector::source::admin;

/// Labelled anomaly windows of one series (NAB `combined_windows.json`).
#[derive(Debug, Clone, Default)]
pub struct Labels {
    /// The matched entry's name.
    pub series: String,
    /// `[start, end]` in epoch ms, inclusive.
    pub windows: Vec<(i64, i64)>,
}

impl Labels {
    /// Reads the labels and picks the entry whose path is a suffix of `replayed` (or has the
    /// same file name).
    ///
    /// # Errors
    /// An unreadable file, a malformed entry, or no entry for the replayed file.
    pub fn load(path: &Path, replayed: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        let all: std::collections::BTreeMap<String, Vec<Vec<String>>> = serde_json::from_str(&text)
            .with_context(|| {
                format!(
                    "{}: expected {{\"<relpath>\": [[start, end], ...]}}",
                    path.display()
                )
            })?;
        let replayed_s = replayed.to_string_lossy().replace('\\', "/");
        let name = replayed
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((series, windows)) = all
            .iter()
            .find(|(k, _)| replayed_s.ends_with(k.as_str()))
            .or_else(|| {
                all.iter().find(|(k, _)| {
                    !name.is_empty()
                        && Path::new(k)
                            .file_name()
                            .is_some_and(|f| f.to_string_lossy() == name)
                })
            })
        else {
            bail!(
                "{}: no labelled windows for {}",
                path.display(),
                replayed.display()
            );
        };
        let parse = |s: &str| {
            vigil_core::decode::parse_event_time(s, TimeFormat::Auto)
                .map_err(|e| anyhow::anyhow!("{series}: {e}"))
        };
        let windows = windows
            .iter()
            .map(|w| match w.as_slice() {
                [a, b] => Ok((parse(a)?, parse(b)?)),
                _ => bail!("{series}: a window must be [start, end]"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            series: series.clone(),
            windows,
        })
    }

    /// 1-based index of the labelled window containing `t`.
    pub fn window_of(&self, t: i64) -> Option<usize> {
        self.windows
            .iter()
            .position(|(a, b)| *a <= t && t <= *b)
            .map(|i| i + 1)
    }
}

fn fmt_ms(t: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t)
        .map_or_else(|| t.to_string(), |d| d.format("%Y-%m-%d %H:%M").to_string())
}

/// An alert as read back from the alerts topic.
#[derive(Debug, Clone)]
pub struct ReadAlert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Event time (window end), epoch ms.
    pub event_time: i64,
}

/// Reads the alerts topic from its end at start-up and prints each alert as one line.
pub struct AlertPrinter {
    stop: Arc<AtomicBool>,
    finish_by: Arc<Mutex<Option<Instant>>>,
    thread: std::thread::JoinHandle<Vec<ReadAlert>>,
}

impl AlertPrinter {
    pub fn start(bootstrap: &str, topic: &str, labels: Option<Labels>) -> anyhow::Result<Self> {
        let start = admin::high_watermarks(bootstrap, topic, Duration::from_secs(10))?;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set(
                "group.id",
                format!("vigil-alert-printer-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for (p, hi) in &start {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*hi))?;
        }
        consumer.assign(&tpl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let finish_by = Arc::new(Mutex::new(None::<Instant>));
        let (s, f, topic, bootstrap) = (
            stop.clone(),
            finish_by.clone(),
            topic.to_string(),
            bootstrap.to_string(),
        );
        let thread = std::thread::Builder::new()
            .name("vigil-alerts".into())
            .spawn(move || {
                let mut seen = Vec::new();
                let mut positions: std::collections::HashMap<i32, i64> =
                    start.iter().copied().collect();
                let mut target: Option<Vec<(i32, i64)>> = None;
                loop {
                    if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                        match m {
                            Ok(m) => {
                                positions.insert(m.partition(), m.offset() + 1);
                                if let Some(a) =
                                    print_alert(m.payload().unwrap_or(&[]), labels.as_ref())
                                {
                                    seen.push(a);
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "Alert reader error."),
                        }
                    }
                    let deadline = *f.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(deadline) = deadline {
                        // Read up to the end of the topic as it is now, then stop.
                        if target.is_none() {
                            target = Some(
                                admin::high_watermarks(&bootstrap, &topic, Duration::from_secs(5))
                                    .unwrap_or_default(),
                            );
                        }
                        let done = target.as_ref().is_some_and(|t| {
                            t.iter()
                                .all(|(p, hi)| positions.get(p).copied().unwrap_or(0) >= *hi)
                        });
                        if done || Instant::now() >= deadline {
                            break;
                        }
                    } else if s.load(Ordering::Relaxed) {
                        break;
                    }
                }
                seen
            })?;
        Ok(Self {
            stop,
            finish_by,
            thread,
        })
    }

    /// Reads what is left on the topic (at most `timeout`) and returns every alert read.
    pub fn finish(self, timeout: Duration) -> Vec<ReadAlert> {
        *self.finish_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + timeout);
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn print_alert(payload: &[u8], labels: Option<&Labels>) -> Option<ReadAlert> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let d = &v["data"];
    let status = d["status"].as_str().unwrap_or("?").to_string();
    let event_time = d["eventTime"].as_i64().unwrap_or(0);
    let value = d["value"]
        .as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.3}"));
    let mut line = format!(
        "ALERT {status:<8} {sev:<8} rule={rule} key={key} window={win} [{ws} .. {we}) value={value} score={score:.2}",
        sev = d["severity"].as_str().unwrap_or("?"),
        rule = d["rule"].as_str().unwrap_or("?"),
        key = d["key"].as_str().unwrap_or("?"),
        win = d["window"].as_str().unwrap_or("?"),
        ws = fmt_ms(d["windowStart"].as_i64().unwrap_or(0)),
        we = fmt_ms(event_time),
        score = d["score"].as_f64().unwrap_or(0.0),
    );
    if let Some(l) = labels {
        match l.window_of(event_time) {
            Some(k) => {
                let (a, b) = l.windows[k - 1];
                line.push_str(&format!(
                    " | inside labelled window #{k} [{} .. {}]",
                    fmt_ms(a),
                    fmt_ms(b)
                ));
            }
            None => line.push_str(" | outside any labelled window"),
        }
    }
    if let Some(s) = d["annotations"]["summary"].as_str() {
        line.push_str(&format!(" | {s}"));
    }
    println!("{line}");
    Some(ReadAlert { status, event_time })
}

pub fn print_summary(s: &RunSummary, alerts: Option<&Vec<ReadAlert>>, labels: Option<&Labels>) {
    let alerts = alerts.cloned().unwrap_or_default();
    let firing: Vec<&ReadAlert> = alerts.iter().filter(|a| a.status == "firing").collect();
    let resolved = alerts.len() - firing.len();
    let mut line = format!(
        "SUMMARY events={} dead_letters={} windows_fired={} alerts_firing={} alerts_resolved={resolved}",
        s.counters.records,
        s.dead_letters,
        s.counters.windows_fired,
        firing.len(),
    );
    if let Some(l) = labels {
        let covered = (1..=l.windows.len())
            .filter(|k| firing.iter().any(|a| l.window_of(a.event_time) == Some(*k)))
            .count();
        let outside = firing
            .iter()
            .filter(|a| l.window_of(a.event_time).is_none())
            .count();
        line.push_str(&format!(
            " labelled_windows_covered={covered}/{} firing_outside_windows={outside} series={}",
            l.windows.len(),
            l.series
        ));
    }
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_by_path_suffix_and_find_the_window() {
        let dir = std::env::temp_dir().join(format!("vigil-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("combined_windows.json");
        std::fs::write(
            &f,
            r#"{"realKnownCause/other.csv": [], "realKnownCause/machine.csv": [["2013-12-10 06:25:00.000000", "2013-12-12 05:35:00.000000"], ["2014-01-01 00:00:00.000000", "2014-01-02 00:00:00.000000"]]}"#,
        )
        .unwrap();
        let l = Labels::load(&f, Path::new("/data/nab/data/realKnownCause/machine.csv")).unwrap();
        assert_eq!(l.series, "realKnownCause/machine.csv");
        assert_eq!(l.windows.len(), 2);
        let t =
            vigil_core::decode::parse_event_time("2013-12-11 00:00:00", TimeFormat::Auto).unwrap();
        assert_eq!(l.window_of(t), Some(1));
        assert_eq!(l.window_of(t - 3 * 86_400_000), None);
        assert!(Labels::load(&f, Path::new("x/unknown.csv")).is_err());
    }
}
