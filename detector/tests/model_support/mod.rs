//! Shared helpers of the model scoring tests (`tests/model_*.rs`): a real Vigil model server
//! (ONNX Runtime from `ORT_DYLIB_PATH`, the committed reference models) on `127.0.0.1`, the NAB
//! data, and a loop that drives the engine and the scorer the way the run loop does.

#![allow(dead_code)]

#[allow(dead_code)] // not every test binary uses the scenario
pub mod presses;

use std::path::PathBuf;
use std::time::Duration;

use vigil_api::manifest::Manifests;
use vigil_core::engine::{Engine, Outputs, RawRecord};
use vigil_core::rules::alert::Alert;
use vigil_detector::scoring::{ModelScorer, ScoreReport};
use vigil_model_server::{ModelServer, ServerConfig};

/// The ONNX Runtime library. Panics with instructions when `ORT_DYLIB_PATH` is unset: these
/// tests must not pass by skipping.
pub fn ort_dylib() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "ORT_DYLIB_PATH is not set. The model scoring tests need ONNX Runtime: run \
             `eval \"$(scripts/setup-onnxruntime.sh)\"` first (it installs the pinned onnxruntime wheel into \
             ${{VIGIL_CACHE:-~/.cache/vigil}}/venv and exports the path)."
        ),
    }
}

/// `models/repository` of this checkout.
pub fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/repository")
}

/// A NAB data file: under `VIGIL_NAB_DATA`, else the repository's `data/nab`.
pub fn nab(relpath: &str) -> PathBuf {
    let root = std::env::var_os("VIGIL_NAB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/nab"));
    let p = root.join(relpath);
    assert!(
        p.exists(),
        "NAB file not found at {} (set VIGIL_NAB_DATA)",
        p.display()
    );
    p
}

/// A model server on its own runtime, serving the reference repository on `127.0.0.1`.
/// Dropping it (or [`Self::kill`]) tears the runtime down: listener and connections close at
/// once, as when the process dies.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub uri: String,
    /// The bound port.
    pub port: u16,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    /// Starts serving on `127.0.0.1:port` (0: any free port).
    pub fn start(port: u16) -> Self {
        Self::start_with(port, None)
    }

    /// [`Self::start`], serving gRPC over TLS when `tls` is given.
    pub fn start_with(port: u16, tls: Option<vigil_model_server::config::ServerTls>) -> Self {
        Self::start_in(&repository(), port, tls)
    }

    /// [`Self::start_with`] serving the model repository at `repo`.
    pub fn start_in(
        repo: &std::path::Path,
        port: u16,
        tls: Option<vigil_model_server::config::ServerTls>,
    ) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = ServerConfig::new(repo.to_path_buf());
        config.ort_dylib_path = Some(ort_dylib());
        config.intra_op_threads = Some(1);
        config.tls = tls;
        let server = rt
            .block_on(ModelServer::start(config))
            .expect("model server starts");
        assert!(server.is_ready(), "every reference model loads");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("bind");
        let port = listener.local_addr().unwrap().port();
        rt.spawn(async move { server.serve(listener, std::future::pending()).await });
        Self {
            uri: format!("http://127.0.0.1:{port}"),
            port,
            rt: Some(rt),
        }
    }

    /// Stops the server abruptly (runtime shut down: no graceful drain).
    pub fn kill(mut self) -> u16 {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        self.port
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Manifests from YAML text.
pub fn manifests(yaml: &str) -> Manifests {
    let mut m = Manifests::default();
    m.add_str("test", yaml).expect("valid manifests");
    m
}

/// What [`Driver::process`] saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Alert transitions, in order.
    pub alerts: Vec<Alert>,
    /// Scoring reports of every call with inputs.
    pub reports: Vec<ScoreReport>,
}

/// The library's [`vigil_detector::driver::Driver`] over a NAB series of one key, collecting
/// what came out.
pub struct Driver {
    pub inner: vigil_detector::driver::Driver,
    out: Outputs,
    offset: i64,
}

impl Driver {
    pub fn new(engine: Engine, scorer: ModelScorer) -> Self {
        Self {
            inner: vigil_detector::driver::Driver::new(engine, Some(scorer)),
            out: Outputs::default(),
            offset: 0,
        }
    }

    /// One event of `key` at `now_ms`; scores what it closed.
    pub fn process(&mut self, key: &str, payload: &[u8], now_ms: i64, seen: &mut Seen) {
        let rec = RawRecord {
            partition: 0,
            offset: self.offset,
            key: Some(key.as_bytes()),
            payload,
        };
        self.offset += 1;
        let (_, report) = self.inner.process(&rec, now_ms, &mut self.out);
        self.collect(report, seen);
    }

    /// Fires every open window (end of input) and scores them.
    pub fn flush(&mut self, now_ms: i64, seen: &mut Seen) {
        let report = self.inner.flush(now_ms, &mut self.out);
        self.collect(report, seen);
    }

    fn collect(&mut self, report: Option<ScoreReport>, seen: &mut Seen) {
        seen.reports.extend(report);
        seen.alerts.append(&mut self.out.alerts);
        self.out.clear();
    }
}

/// `(event time ms, JSON payload)` of every row of a NAB CSV.
pub fn nab_rows(relpath: &str) -> Vec<(i64, Vec<u8>)> {
    let (_, rows) = vigil_core::input::read_rows(&nab(relpath)).unwrap();
    rows.into_iter()
        .map(|r| {
            (
                vigil_core::decode::parse_event_time(&r.cells[0], Default::default()).unwrap(),
                r.json,
            )
        })
        .collect()
}
