"""Writes a model version into a Vigil model repository: `<repo>/<model>/<version>/model.onnx`,
its `config.yaml` (tensor contract, feature order, window tier, threshold, sha256 of the artifact)
and a test vector file that the Rust tests replay against the server.

Owns the on-disk layout and config schema shared with `model-server/src/config.rs` (which rejects
unknown keys, so the two must change together).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import yaml

from .features import Window

HEADER = """\
# Vigil model version config, read by vigil-model-server (model-server/src/config.rs).
# Written by models/vigil_models/train.py (scripts/model-train.sh): regenerate, do not edit by hand;
# `sha256` is the digest of `artifact`, checked before the model is served.
"""


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensor(name: str, datatype: str, shape: list[int]) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape}


def write_version(
    repo: Path,
    model_name: str,
    version: str,
    model: onnx.ModelProto,
    *,
    description: str,
    inputs: list[dict],
    outputs: list[dict],
    feature_names: list[str],
    window: Window,
    lookback: int,
    score_output: str,
    threshold: float,
    anomalous_when: str,
    max_batch_size: int,
    max_queue_delay_us: int,
    training: dict,
) -> Path:
    """Writes the artifact and its config; returns the version directory."""
    vdir = repo / model_name / version
    vdir.mkdir(parents=True, exist_ok=True)
    artifact = vdir / "model.onnx"
    artifact.write_bytes(model.SerializeToString())
    config = {
        "description": description,
        "platform": "onnxruntime_onnx",
        "artifact": "model.onnx",
        "sha256": sha256_file(artifact),
        "inputs": inputs,
        "outputs": outputs,
        "max_batch_size": max_batch_size,
        "max_queue_delay_us": max_queue_delay_us,
        "features": feature_names,
        "lookback": lookback,
        "window": {
            "tier": window.tier,
            "kind": window.kind,
            "size_secs": window.size_secs,
            "slide_secs": window.slide_secs,
        },
        "score": {
            "output": score_output,
            "threshold": float(threshold),
            "anomalous_when": anomalous_when,
        },
        "training": training,
    }
    text = HEADER + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
    (vdir / "config.yaml").write_text(text)
    return vdir


def write_test_vectors(
    path: Path, model_name: str, version: str, input_name: str, x: np.ndarray, outputs: dict
) -> None:
    """Held-back inputs and the training framework's outputs for them (float32 values)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "model": model_name,
        "version": version,
        "input": {
            "name": input_name,
            "shape": list(x.shape),
            "data": [float(v) for v in np.asarray(x, dtype=np.float32).ravel()],
        },
        "outputs": {
            name: {
                "shape": list(np.shape(v)),
                "data": [float(e) if np.issubdtype(np.asarray(v).dtype, np.floating) else int(e)
                         for e in np.asarray(v).ravel()],
            }
            for name, v in outputs.items()
        },
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
