//! Dynamic batching for one loaded model version: a bounded queue of requests and one worker
//! thread that owns the version's ONNX Runtime session.
//!
//! Policy (Triton's dynamic batcher): the worker takes the oldest request, then keeps adding
//! queued requests while the batch stays within `max_batch_size` rows and the oldest request has
//! waited less than `max_queue_delay`. A request that would overflow the batch starts the next
//! one; a request larger than `max_batch_size` runs alone. Inputs are concatenated along
//! dimension 0, and each output is split back by the requests' row counts, so every response
//! holds exactly its own rows, in order.
//!
//! Lifetime: the worker stops when the last [`Batcher`] handle is dropped, after executing every
//! request still queued, so unloading a model never fails requests already accepted.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use crate::metrics::VersionMetrics;
use crate::runtime::OnnxSession;
use crate::tensor::Tensor;

/// Requests that may wait in one version's queue before new ones are refused.
pub const MAX_QUEUED_REQUESTS: usize = 4096;

/// Batching limits of one model version (from its config).
#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    /// Most rows per execution; 0 disables batching.
    pub max_batch_size: usize,
    /// Longest wait of the oldest queued request for others to join.
    pub max_queue_delay: Duration,
}

/// Why a queued request got no outputs.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The queue already holds [`MAX_QUEUED_REQUESTS`] requests.
    #[error("the model's request queue is full ({MAX_QUEUED_REQUESTS} requests)")]
    QueueFull,
    /// The worker thread is gone (it panicked, or the version was dropped mid-request).
    #[error("the model's batch worker stopped")]
    Stopped,
    /// ONNX Runtime failed to execute the batch this request was part of.
    #[error("model execution failed: {0}")]
    Execute(String),
}

struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<Tensor>, BatchError>>,
}

/// Handle to the queue of one model version.
#[derive(Debug)]
pub struct Batcher {
    tx: Sender<Job>,
}

impl Batcher {
    /// Starts the worker thread that owns `session`.
    ///
    /// `input_names` are the config's input names, in the order requests pass their tensors.
    ///
    /// # Errors
    /// When the OS refuses to spawn a thread.
    pub fn start(
        label: &str,
        session: OnnxSession,
        input_names: Vec<String>,
        policy: BatchPolicy,
        metrics: VersionMetrics,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(MAX_QUEUED_REQUESTS);
        let worker = Worker {
            rx,
            session,
            input_names,
            policy,
            metrics,
        };
        std::thread::Builder::new()
            .name(format!("batch-{label}"))
            .spawn(move || worker.run())?;
        Ok(Batcher { tx })
    }

    /// Queues one request and waits for its outputs (config output order).
    ///
    /// `inputs` are in config input order; `rows` is their common dimension 0 (1 for models
    /// without batching).
    ///
    /// # Errors
    /// [`BatchError`] when the queue is full, the worker is gone, or execution failed.
    pub async fn infer(&self, inputs: Vec<Tensor>, rows: usize) -> Result<Vec<Tensor>, BatchError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            enqueued: Instant::now(),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(BatchError::QueueFull),
            Err(TrySendError::Disconnected(_)) => return Err(BatchError::Stopped),
        }
        rx.await.map_err(|_| BatchError::Stopped)?
    }
}

struct Worker {
    rx: Receiver<Job>,
    session: OnnxSession,
    input_names: Vec<String>,
    policy: BatchPolicy,
    metrics: VersionMetrics,
}

impl Worker {
    fn run(mut self) {
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(job) => job,
                None => match self.rx.recv() {
                    Ok(job) => job,
                    Err(_) => return, // every handle dropped and the queue is drained
                },
            };
            let mut rows = first.rows;
            let deadline = first.enqueued + self.policy.max_queue_delay;
            let mut jobs = vec![first];
            if self.policy.max_batch_size > 0 {
                while rows < self.policy.max_batch_size {
                    let next = match self.rx.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => match self.rx.recv_deadline(deadline) {
                            Ok(job) => job,
                            Err(_) => break,
                        },
                        Err(TryRecvError::Disconnected) => break,
                    };
                    if rows + next.rows > self.policy.max_batch_size {
                        carry = Some(next);
                        break;
                    }
                    rows += next.rows;
                    jobs.push(next);
                }
            }
            self.execute(jobs);
        }
    }

    fn execute(&mut self, jobs: Vec<Job>) {
        // Requests whose callers went away (cancelled, timed out) are not computed.
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if jobs.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut row_counts = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut per_job_inputs = Vec::with_capacity(jobs.len());
        for job in jobs {
            self.metrics
                .queued(started.saturating_duration_since(job.enqueued));
            row_counts.push(job.rows);
            replies.push(job.reply);
            per_job_inputs.push(job.inputs.into_iter());
        }
        let rows: usize = row_counts.iter().sum();
        let inputs: Vec<(String, Tensor)> = self
            .input_names
            .iter()
            .map(|name| {
                let parts: Vec<Tensor> = per_job_inputs
                    .iter_mut()
                    .map(|it| it.next().expect("one tensor per declared input"))
                    .collect();
                (name.clone(), Tensor::concat(parts))
            })
            .collect();

        let result = self.session.run(inputs);
        self.metrics.batch(rows, started.elapsed());

        let outputs = match result {
            Ok(outputs) => outputs,
            Err(e) => {
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(BatchError::Execute(msg.clone())));
                }
                return;
            }
        };
        if replies.len() == 1 {
            let _ = replies.pop().expect("one reply").send(Ok(outputs));
            return;
        }
        if let Some(bad) = outputs
            .iter()
            .find(|t| t.shape.first().and_then(|&d| usize::try_from(d).ok()) != Some(rows))
        {
            let msg = format!(
                "output shape {:?} does not keep the batch dimension of {rows} rows",
                bad.shape
            );
            for reply in replies {
                let _ = reply.send(Err(BatchError::Execute(msg.clone())));
            }
            return;
        }
        let mut per_output: Vec<std::vec::IntoIter<Tensor>> = outputs
            .into_iter()
            .map(|t| t.split(&row_counts).into_iter())
            .collect();
        for reply in replies {
            let mine: Vec<Tensor> = per_output
                .iter_mut()
                .map(|it| it.next().expect("one piece per request"))
                .collect();
            let _ = reply.send(Ok(mine));
        }
    }
}
