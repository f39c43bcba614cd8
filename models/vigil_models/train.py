"""Trains and exports Vigil's reference models on NAB window features.

    python -m vigil_models.train --nab ../data/nab --repo repository --testdata testdata

Owns the training recipe of both reference models (Isolation Forest, LSTM autoencoder), the
held-back split, and the export check: ONNX Runtime must reproduce the training framework's
outputs on held-back rows to 1e-4, or the script fails and writes nothing further.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import IsolationForest

from . import export, lstm_ae
from .features import ANALYSIS, FEATURE_NAMES, read_nab, sequences, window_features

TOLERANCE = 1e-4
SEED = 42
HOLDBACK = 0.1
N_VECTORS = 32  # held-back rows written as test vectors for the Rust tests

# Isolation Forest: small on purpose (the artifact is committed and loaded by every test run).
IFOREST_TREES = 32
IFOREST_MAX_SAMPLES = 64
IFOREST_CONTAMINATION = 0.01  # decision_function < 0 for the 1% most isolated training rows
IFOREST_OPSETS = {"": 17, "ai.onnx.ml": 3}

# Dynamic batching of the served models: Triton's default delay of 0 combines only requests that
# queued while the previous batch ran, so a lone request never waits. Raise it (config.yaml) to
# trade latency for bigger batches.
MAX_QUEUE_DELAY_US = 0

LSTM_LOOKBACK = 6  # windows per sequence: 6 hours of the `analysis` tier
LSTM_HIDDEN = 8
LSTM_EPOCHS = 40
LSTM_THRESHOLD_QUANTILE = 0.99


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_series(nab: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    names = [line.strip() for line in (nab / "dev.txt").read_text().splitlines() if line.strip()]
    out = []
    for name in names:
        starts, x = window_features(read_nab(nab / "data" / name), ANALYSIS)
        out.append((name, starts, x))
        log(f"{name}: {len(starts)} windows")
    return out


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def ort_run(model_bytes: bytes, feeds: dict) -> dict:
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def train_iforest(x_train: np.ndarray, x_held: np.ndarray, repo: Path, testdata: Path) -> dict:
    t0 = time.time()
    # Fit on float32-rounded values: the ONNX graph compares float32 features with the split
    # thresholds, so this keeps both sides of every split identical.
    x_train = x_train.astype(np.float32).astype(np.float64)
    x_held = x_held.astype(np.float32)
    clf = IsolationForest(
        n_estimators=IFOREST_TREES,
        max_samples=IFOREST_MAX_SAMPLES,
        contamination=IFOREST_CONTAMINATION,
        random_state=SEED,
    ).fit(x_train)
    onx = convert_sklearn(
        clf,
        initial_types=[("features", FloatTensorType([None, len(FEATURE_NAMES)]))],
        target_opset=IFOREST_OPSETS,
    )
    onx.graph.name = "vigil_iforest"  # skl2onnx picks a random name; keep exports reproducible
    got = ort_run(onx.SerializeToString(), {"features": x_held})
    want_scores = clf.decision_function(x_held.astype(np.float64)).reshape(-1, 1)
    want_label = clf.predict(x_held.astype(np.float64)).reshape(-1, 1)
    diff = max_abs_diff(got["scores"], want_scores)
    labels_equal = bool(np.array_equal(got["label"], want_label))
    log(f"iforest: ONNX Runtime vs scikit-learn on {len(x_held)} held-back rows: "
        f"max |scores diff| = {diff:.3g}, labels equal = {labels_equal}")
    if diff > TOLERANCE or not labels_equal:
        raise SystemExit(f"iforest export check failed (diff {diff}, labels equal {labels_equal})")
    vdir = export.write_version(
        repo, "iforest", "1", onx,
        description="Isolation Forest over the 11 window features of `value` (analysis tier). "
        "`scores` is scikit-learn's decision_function: negative = more anomalous.",
        inputs=[export.tensor("features", "FP32", [-1, len(FEATURE_NAMES)])],
        outputs=[export.tensor("scores", "FP32", [-1, 1]), export.tensor("label", "INT64", [-1, 1])],
        feature_names=FEATURE_NAMES,
        window=ANALYSIS,
        lookback=1,
        score_output="scores",
        threshold=0.0,
        anomalous_when="below",
        max_batch_size=1024,
        max_queue_delay_us=MAX_QUEUE_DELAY_US,
        training={
            "framework": f"scikit-learn {sklearn.__version__}",
            "exporter": f"skl2onnx {skl2onnx.__version__}",
            "opsets": "ai.onnx 17, ai.onnx.ml 3",
            "data": "NAB dev.txt (13 series), 90% of windows; 10% held back",
            "rows": int(len(x_train)),
            "n_estimators": IFOREST_TREES,
            "max_samples": IFOREST_MAX_SAMPLES,
            "contamination": IFOREST_CONTAMINATION,
            "random_state": SEED,
            "export_check_max_abs_diff": diff,
        },
    )
    export.write_test_vectors(
        testdata / "iforest-1.json", "iforest", "1", "features", x_held[:N_VECTORS],
        {"scores": want_scores[:N_VECTORS].astype(np.float32), "label": want_label[:N_VECTORS]},
    )
    size = (vdir / "model.onnx").stat().st_size
    log(f"iforest: wrote {vdir} ({size} bytes) in {time.time() - t0:.1f}s")
    return {"model": "iforest", "bytes": size, "max_abs_diff": diff}


def train_lstm(series, held_mask, repo: Path, testdata: Path) -> dict:
    t0 = time.time()
    train_seqs, held_seqs = [], []
    for (_, starts, x), held in zip(series, held_mask):
        seqs = sequences(x, starts, LSTM_LOOKBACK, ANALYSIS.slide_secs)
        # A sequence is held back when its newest window is.
        ends = [i for i in range(LSTM_LOOKBACK - 1, len(x))
                if starts[i] - starts[i - LSTM_LOOKBACK + 1] == (LSTM_LOOKBACK - 1) * ANALYSIS.slide_secs]
        flags = held[ends]
        train_seqs.append(seqs[~flags])
        held_seqs.append(seqs[flags])
    train_x = np.concatenate(train_seqs).astype(np.float32).astype(np.float64)
    held_x = np.concatenate(held_seqs).astype(np.float32)
    log(f"lstm-ae: {len(train_x)} training sequences, {len(held_x)} held back")
    model = lstm_ae.train(train_x, hidden=LSTM_HIDDEN, epochs=LSTM_EPOCHS, seed=SEED, log=log)
    train_scores = model.score(train_x)
    threshold = float(np.quantile(train_scores, LSTM_THRESHOLD_QUANTILE))
    onx = lstm_ae.to_onnx(model, LSTM_LOOKBACK, len(FEATURE_NAMES))
    got = ort_run(onx.SerializeToString(), {"windows": held_x})
    want = model.score(held_x.astype(np.float64)).reshape(-1, 1)
    diff = max_abs_diff(got["score"], want)
    log(f"lstm-ae: ONNX Runtime vs numpy on {len(held_x)} held-back sequences: "
        f"max |score diff| = {diff:.3g}")
    if diff > TOLERANCE:
        raise SystemExit(f"lstm-ae export check failed (diff {diff})")
    vdir = export.write_version(
        repo, "lstm-ae", "1", onx,
        description="LSTM autoencoder over 6 consecutive analysis windows of the 11 `value` "
        "features. `score` is the mean squared reconstruction error of the standardised signed-log "
        "features: higher = more anomalous.",
        inputs=[export.tensor("windows", "FP32", [-1, LSTM_LOOKBACK, len(FEATURE_NAMES)])],
        outputs=[
            export.tensor("score", "FP32", [-1, 1]),
            export.tensor("reconstruction", "FP32", [-1, LSTM_LOOKBACK, len(FEATURE_NAMES)]),
        ],
        feature_names=FEATURE_NAMES,
        window=ANALYSIS,
        lookback=LSTM_LOOKBACK,
        score_output="score",
        threshold=threshold,
        anomalous_when="above",
        max_batch_size=512,
        max_queue_delay_us=MAX_QUEUE_DELAY_US,
        training={
            "framework": f"numpy {np.__version__} (BPTT, Adam)",
            "exporter": "onnx.helper, opset 18",
            "data": "NAB dev.txt (13 series); sequences whose newest window is held back are excluded",
            "rows": int(len(train_x)),
            "hidden": LSTM_HIDDEN,
            "epochs": LSTM_EPOCHS,
            "threshold": f"{LSTM_THRESHOLD_QUANTILE} quantile of training scores",
            "random_seed": SEED,
            "export_check_max_abs_diff": diff,
        },
    )
    export.write_test_vectors(
        testdata / "lstm-ae-1.json", "lstm-ae", "1", "windows", held_x[:N_VECTORS],
        {"score": want[:N_VECTORS].astype(np.float32)},
    )
    size = (vdir / "model.onnx").stat().st_size
    log(f"lstm-ae: wrote {vdir} ({size} bytes) in {time.time() - t0:.1f}s")
    return {"model": "lstm-ae", "bytes": size, "max_abs_diff": diff, "threshold": threshold}


def write_feature_goldens(series, path: Path, per_series: int = 24) -> None:
    """The first windows of a 5-minute and a 30-minute series, for detector parity tests."""
    doc = {"window": {"tier": ANALYSIS.tier, "size_secs": ANALYSIS.size_secs,
                      "slide_secs": ANALYSIS.slide_secs},
           "features": FEATURE_NAMES, "series": {}}
    for name, starts, x in series:
        if name.endswith(("nyc_taxi.csv", "machine_temperature_system_failure.csv")):
            doc["series"][name] = [
                {"start": int(s), "values": [float(v) for v in row]}
                for s, row in zip(starts[:per_series], x[:per_series])
            ]
    path.write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nab", type=Path, required=True, help="NAB directory with dev.txt and data/")
    ap.add_argument("--repo", type=Path, required=True, help="model repository to write into")
    ap.add_argument("--testdata", type=Path, required=True, help="directory for test vectors")
    args = ap.parse_args()

    series = load_series(args.nab)
    rng = np.random.default_rng(SEED)
    held_mask = [rng.random(len(x)) < HOLDBACK for _, _, x in series]
    x_all = np.concatenate([x for _, _, x in series])
    held_all = np.concatenate(held_mask)
    log(f"{len(x_all)} windows, {int(held_all.sum())} held back")
    args.testdata.mkdir(parents=True, exist_ok=True)
    write_feature_goldens(series, args.testdata / "window-features.json")
    summary = [
        train_iforest(x_all[~held_all], x_all[held_all], args.repo, args.testdata),
        train_lstm(series, held_mask, args.repo, args.testdata),
    ]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
