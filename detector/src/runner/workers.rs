//! Several engine workers in one process (`RunnerConfig::workers`, `vigil run --workers`), so
//! a detector uses more than one core. Each worker is a member of the pipeline's consumer
//! group with its own consumer, engine, sinks and loop thread, like a Kafka Streams stream
//! thread: the group protocol spreads the partitions over the workers (and over the other
//! detectors of the group), and everything that is per partition stays so: watermarks, offset
//! commits, checkpoints (each worker writes its own, as member `<member>-w<i>`) and the
//! revocation protocol. Workers share nothing but the metrics and the latency probe.
//!
//! The handle of worker 0 stands for all of them: a control message goes to every worker
//! (a savepoint is the union of their parts), `stop` stops all, `join` waits for all and adds
//! up their summaries. A bounded input ([`super::Control::DrainAndStop`]) ends for all workers
//! together ([`DrainBarrier`]).

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Control, RunError, RunSummary, RunnerConfig, RunnerHandle};
use crate::checkpoint::CheckpointMetadata;
use crate::telemetry::Metrics;

/// How long a savepoint may take per worker before the request fails.
const SAVEPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// The end of a bounded input, shared by the workers of one process: the input has ended
/// once every partition in the end offsets was read to its end by the worker that owns it.
/// Each worker then fires its open windows (end of input) and waits, bounded, until every
/// worker has, before it leaves the consumer group (leaving earlier would hand its partitions
/// to a worker still working).
#[derive(Debug)]
pub struct DrainBarrier {
    workers: usize,
    state: Mutex<BarrierState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct BarrierState {
    /// Per worker: the engine partitions it owns and has read to their end.
    read: Vec<Vec<i32>>,
    /// Workers that fired their windows and are ready to leave.
    finished: usize,
}

impl DrainBarrier {
    /// A barrier for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            workers,
            state: Mutex::new(BarrierState {
                read: vec![Vec::new(); workers],
                finished: 0,
            }),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BarrierState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Worker `worker` owns `partitions` and has read them to their end (replacing what it
    /// said before; empty after a revocation).
    pub fn publish(&self, worker: usize, partitions: &[i32]) {
        let mut s = self.lock();
        if let Some(r) = s.read.get_mut(worker) {
            r.clear();
            r.extend_from_slice(partitions);
        }
    }

    /// Whether every partition of `ends` was read to its end by some worker.
    pub fn complete(&self, mut ends: impl Iterator<Item = i32>) -> bool {
        let s = self.lock();
        ends.all(|p| s.read.iter().any(|r| r.contains(&p)))
    }

    /// This worker fired its windows: waits until every worker has, at most `timeout`.
    /// Whether all did.
    pub fn finished(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        s.finished += 1;
        self.done.notify_all();
        while s.finished < self.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .done
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Starts `cfg.workers` workers; the handle of the first stands for all.
pub(super) fn spawn(cfg: RunnerConfig, metrics: Metrics) -> Result<RunnerHandle, RunError> {
    let n = cfg.workers;
    let barrier = Arc::new(DrainBarrier::new(n));
    // Started together, so that they join the group at about the same time: one started
    // seconds after another would find every partition taken and make it hand some over.
    let started: Vec<Result<RunnerHandle, RunError>> = std::thread::scope(|scope| {
        let spawning: Vec<_> = (0..n)
            .map(|i| {
                let mut c = cfg.clone();
                c.worker = Some(i);
                c.drain_barrier = Some(barrier.clone());
                let m = metrics.clone();
                scope.spawn(move || super::spawn(c, m))
            })
            .collect();
        spawning
            .into_iter()
            .map(|t| t.join().unwrap_or(Err(RunError::Panicked)))
            .collect()
    });
    let mut handles: Vec<RunnerHandle> = Vec::with_capacity(n);
    let mut error = None;
    for r in started {
        match r {
            Ok(h) => handles.push(h),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = error {
        for h in &handles {
            h.stop();
        }
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }
    let controls: Vec<SyncSender<Control>> = handles.iter().map(RunnerHandle::control).collect();
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    std::thread::Builder::new()
        .name("vigil-workers".into())
        .spawn(move || dispatch(&rx, &controls))
        .map_err(|_| RunError::Panicked)?;
    tracing::info!(
        workers = n,
        "Engine workers started, each a member of the consumer group."
    );
    let mut first = handles.remove(0);
    first.control = tx;
    first.siblings = handles;
    Ok(first)
}

/// Forwards each control message to every worker until the handle is dropped.
fn dispatch(rx: &Receiver<Control>, workers: &[SyncSender<Control>]) {
    while let Ok(c) = rx.recv() {
        match c {
            Control::ReplaceRules {
                rules,
                models,
                changed_at,
            } => {
                for w in workers {
                    let _ = w.send(Control::ReplaceRules {
                        rules: rules.clone(),
                        models: models.clone(),
                        changed_at,
                    });
                }
            }
            Control::DrainAndStop { end_offsets } => {
                for w in workers {
                    let _ = w.send(Control::DrainAndStop {
                        end_offsets: end_offsets.clone(),
                    });
                }
            }
            Control::Savepoint { name, reply } => {
                let _ = reply.try_send(savepoint(workers, &name));
            }
        }
    }
}

/// A savepoint of every worker: one part each, answered as one metadata holding all their
/// partitions and keys.
fn savepoint(workers: &[SyncSender<Control>], name: &str) -> Result<CheckpointMetadata, String> {
    let replies: Vec<_> = workers
        .iter()
        .map(|w| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let sent = w.send(Control::Savepoint {
                name: name.to_string(),
                reply: tx,
            });
            (sent, rx)
        })
        .collect();
    let mut merged: Option<CheckpointMetadata> = None;
    for (i, (sent, rx)) in replies.into_iter().enumerate() {
        if sent.is_err() {
            return Err(format!("engine worker {i} has stopped"));
        }
        let part = rx
            .recv_timeout(SAVEPOINT_TIMEOUT)
            .map_err(|_| format!("engine worker {i} did not answer within {SAVEPOINT_TIMEOUT:?}"))?
            .map_err(|e| format!("engine worker {i}: {e}"))?;
        match &mut merged {
            None => merged = Some(part),
            Some(m) => {
                m.partitions.extend(part.partitions);
                m.keys += part.keys;
                m.bytes += part.bytes;
            }
        }
    }
    merged.ok_or_else(|| "no engine worker".to_string())
}

/// Waits for every worker: once one ends with an error or without draining (stopped), the
/// others are stopped too. Their summaries are added up; the first error wins.
pub(super) fn join(first: RunnerHandle, rest: Vec<RunnerHandle>) -> Result<RunSummary, RunError> {
    let mut pending: Vec<RunnerHandle> = std::iter::once(first).chain(rest).collect();
    let mut total: Option<RunSummary> = None;
    let mut error = None;
    while !pending.is_empty() {
        let Some(i) = pending.iter().position(RunnerHandle::is_finished) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let h = pending.swap_remove(i);
        match h.join() {
            Ok(s) => {
                if !s.drained {
                    pending.iter().for_each(RunnerHandle::stop);
                }
                match &mut total {
                    None => total = Some(s),
                    Some(t) => add(t, &s),
                }
            }
            Err(e) => {
                pending.iter().for_each(RunnerHandle::stop);
                error.get_or_insert(e);
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(total.unwrap_or_default()),
    }
}

/// Adds a worker's summary to the total.
fn add(t: &mut RunSummary, s: &RunSummary) {
    t.dead_letter_reasons.merge(&s.dead_letter_reasons);
    t.counters.add(&s.counters);
    t.alerts_sent += s.alerts_sent;
    t.dead_letters += s.dead_letters;
    t.drained &= s.drained;
    // 0: no record.
    t.first_record_ms = match (t.first_record_ms, s.first_record_ms) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    };
    t.last_record_ms = t.last_record_ms.max(s.last_record_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_ends_once_every_partition_was_read_by_some_worker() {
        let b = DrainBarrier::new(2);
        b.publish(0, &[0, 1]);
        assert!(!b.complete([0, 1, 2, 3].into_iter()));
        b.publish(1, &[2]);
        assert!(!b.complete([0, 1, 2, 3].into_iter()));
        b.publish(1, &[2, 3]);
        assert!(b.complete([0, 1, 2, 3].into_iter()));
        // A revocation takes back what the worker had read.
        b.publish(0, &[]);
        assert!(!b.complete([0, 1, 2, 3].into_iter()));
    }

    #[test]
    fn a_worker_waits_for_the_others_to_finish_but_not_forever() {
        let b = Arc::new(DrainBarrier::new(2));
        assert!(
            !b.finished(Duration::from_millis(50)),
            "alone, it times out"
        );
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.finished(Duration::from_secs(10)));
        assert!(t.join().unwrap(), "the second one completes the barrier");
    }
}
