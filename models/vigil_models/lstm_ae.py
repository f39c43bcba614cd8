"""LSTM autoencoder over a lookback of window-feature vectors, trained with numpy (BPTT + Adam)
and exported to ONNX with the `onnx.helper` API (no PyTorch: it only installs here as a 5.5 GB
CUDA build).

Owns: the model's forward pass, gradients, training loop, and the ONNX graph that reproduces the
forward pass. Feature extraction lives in `features.py`; configs and digests in `export.py`.

Architecture (gate order i, o, f, c as in the ONNX LSTM operator):
  raw x [B, T, F] -> signed log  s = sign(x) * ln(1 + |x|)  -> standardise z = (s - mu) / sigma
  encoder LSTM(F -> H) over T, latent = last hidden state [B, H]
  decoder LSTM(H -> H) fed the latent at each of the T steps
  dense H -> F per step = reconstruction of z
  score = mean over T and F of (reconstruction - z)^2, shape [B, 1]; higher = more anomalous.
The signed log and the standardisation are part of the graph, so clients send raw features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18  # ReduceMean takes `axes` as an input from opset 18


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass
class LstmParams:
    W: np.ndarray  # [4H, D] input weights, gates i, o, f, c
    R: np.ndarray  # [4H, H] recurrent weights
    b: np.ndarray  # [4H] bias

    @staticmethod
    def init(rng: np.random.Generator, d: int, h: int) -> "LstmParams":
        k = 1.0 / np.sqrt(h)
        b = np.zeros(4 * h)
        b[2 * h : 3 * h] = 1.0  # forget-gate bias 1 (Jozefowicz et al. 2015)
        return LstmParams(rng.uniform(-k, k, (4 * h, d)), rng.uniform(-k, k, (4 * h, h)), b)


def lstm_forward(p: LstmParams, x: np.ndarray):
    """x [T, B, D] -> (Y [T, B, H], cache)."""
    t_len, batch, _ = x.shape
    h_dim = p.R.shape[1]
    h = np.zeros((batch, h_dim))
    c = np.zeros((batch, h_dim))
    ys, cache = [], []
    for t in range(t_len):
        z = x[t] @ p.W.T + h @ p.R.T + p.b
        i = _sigmoid(z[:, :h_dim])
        o = _sigmoid(z[:, h_dim : 2 * h_dim])
        f = _sigmoid(z[:, 2 * h_dim : 3 * h_dim])
        g = np.tanh(z[:, 3 * h_dim :])
        c_new = f * c + i * g
        tc = np.tanh(c_new)
        h_new = o * tc
        cache.append((x[t], h, c, i, o, f, g, tc))
        h, c = h_new, c_new
        ys.append(h)
    return np.stack(ys), cache


def lstm_backward(p: LstmParams, cache, dy: np.ndarray):
    """dy [T, B, H] (gradient of the loss w.r.t. every output) -> (dx [T, B, D], grads)."""
    h_dim = p.R.shape[1]
    dW, dR, db = np.zeros_like(p.W), np.zeros_like(p.R), np.zeros_like(p.b)
    dx = np.zeros((len(cache),) + cache[0][0].shape)
    dh_next = np.zeros_like(dy[0])
    dc_next = np.zeros_like(dy[0])
    for t in reversed(range(len(cache))):
        x_t, h_prev, c_prev, i, o, f, g, tc = cache[t]
        dh = dy[t] + dh_next
        do = dh * tc
        dc = dh * o * (1.0 - tc * tc) + dc_next
        di, dg, df = dc * g, dc * i, dc * c_prev
        dc_next = dc * f
        dz = np.concatenate(
            [di * i * (1 - i), do * o * (1 - o), df * f * (1 - f), dg * (1 - g * g)], axis=1
        )
        dW += dz.T @ x_t
        dR += dz.T @ h_prev
        db += dz.sum(axis=0)
        dx[t] = dz @ p.W
        dh_next = dz @ p.R
    return dx, LstmParams(dW, dR, db)


@dataclass
class LstmAutoencoder:
    mu: np.ndarray  # [F] mean of the signed log of the training features
    sigma: np.ndarray  # [F] standard deviation of the same (floored at 1e-6)
    enc: LstmParams
    dec: LstmParams
    Wo: np.ndarray  # [H, F]
    bo: np.ndarray  # [F]

    def standardise(self, x: np.ndarray) -> np.ndarray:
        return (signed_log(x) - self.mu) / self.sigma

    def _forward(self, z: np.ndarray):
        """z [B, T, F] standardised -> (reconstruction [T, B, F], caches)."""
        zt = np.transpose(z, (1, 0, 2))
        y_enc, c_enc = lstm_forward(self.enc, zt)
        latent = y_enc[-1]
        dec_in = np.repeat(latent[None], zt.shape[0], axis=0)
        y_dec, c_dec = lstm_forward(self.dec, dec_in)
        recon = y_dec @ self.Wo + self.bo
        return zt, recon, (y_enc, c_enc, y_dec, c_dec)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Raw window-feature sequences [B, T, F] -> anomaly scores [B] (mean squared error)."""
        zt, recon, _ = self._forward(self.standardise(x))
        return ((recon - zt) ** 2).mean(axis=(0, 2))

    def loss_and_grads(self, z: np.ndarray):
        zt, recon, (y_enc, c_enc, y_dec, c_dec) = self._forward(z)
        diff = recon - zt
        loss = float((diff**2).mean())
        drecon = 2.0 * diff / diff.size
        dWo = np.einsum("tbh,tbf->hf", y_dec, drecon)
        dbo = drecon.sum(axis=(0, 1))
        dy_dec = drecon @ self.Wo.T
        ddec_in, g_dec = lstm_backward(self.dec, c_dec, dy_dec)
        dy_enc = np.zeros_like(y_enc)
        dy_enc[-1] = ddec_in.sum(axis=0)
        _, g_enc = lstm_backward(self.enc, c_enc, dy_enc)
        return loss, {"enc": g_enc, "dec": g_dec, "Wo": dWo, "bo": dbo}

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            "enc.W": self.enc.W, "enc.R": self.enc.R, "enc.b": self.enc.b,
            "dec.W": self.dec.W, "dec.R": self.dec.R, "dec.b": self.dec.b,
            "Wo": self.Wo, "bo": self.bo,
        }


def _grad_tensors(g) -> dict[str, np.ndarray]:
    return {
        "enc.W": g["enc"].W, "enc.R": g["enc"].R, "enc.b": g["enc"].b,
        "dec.W": g["dec"].W, "dec.R": g["dec"].R, "dec.b": g["dec"].b,
        "Wo": g["Wo"], "bo": g["bo"],
    }


def train(
    seqs: np.ndarray,
    hidden: int = 8,
    epochs: int = 40,
    batch: int = 128,
    lr: float = 5e-3,
    seed: int = 7,
    log=print,
) -> LstmAutoencoder:
    """Fits the autoencoder on raw sequences [S, T, F] with Adam (Kingma & Ba 2015) and global
    gradient-norm clipping at 1.0."""
    rng = np.random.default_rng(seed)
    _, _, f_dim = seqs.shape
    s = signed_log(seqs.reshape(-1, f_dim))
    mu = s.mean(axis=0)
    sigma = np.maximum(s.std(axis=0), 1e-6)
    model = LstmAutoencoder(
        mu, sigma,
        LstmParams.init(rng, f_dim, hidden), LstmParams.init(rng, hidden, hidden),
        rng.uniform(-1 / np.sqrt(hidden), 1 / np.sqrt(hidden), (hidden, f_dim)), np.zeros(f_dim),
    )
    z_all = model.standardise(seqs)
    params = model.tensors()
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    b1, b2, eps, step = 0.9, 0.999, 1e-8, 0
    for epoch in range(epochs):
        order = rng.permutation(len(z_all))
        losses = []
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            loss, g = model.loss_and_grads(z_all[idx])
            grads = _grad_tensors(g)
            norm = np.sqrt(sum(float((x**2).sum()) for x in grads.values()))
            scale = min(1.0, 1.0 / (norm + 1e-12))
            step += 1
            for k, p in params.items():
                gk = grads[k] * scale
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk * gk
                mhat = m[k] / (1 - b1**step)
                vhat = v[k] / (1 - b2**step)
                p -= lr * mhat / (np.sqrt(vhat) + eps)  # in place: params alias the model arrays
            losses.append(loss)
        if epoch % 10 == 0 or epoch == epochs - 1:
            log(f"lstm-ae epoch {epoch:3d} loss {np.mean(losses):.5f}")
    return model


def gradient_check(seed: int = 0) -> float:
    """Largest relative error between analytic and finite-difference gradients on a tiny model."""
    rng = np.random.default_rng(seed)
    seqs = rng.normal(size=(5, 4, 3)) * 3
    model = train(seqs, hidden=3, epochs=1, batch=5, lr=0.0, log=lambda *_: None)
    z = model.standardise(seqs)
    _, g = model.loss_and_grads(z)
    grads = _grad_tensors(g)
    worst = 0.0
    for name, p in model.tensors().items():
        for idx in [tuple(rng.integers(0, s) for s in p.shape) for _ in range(4)]:
            old = p[idx]
            p[idx] = old + 1e-6
            lp, _ = model.loss_and_grads(z)
            p[idx] = old - 1e-6
            lm, _ = model.loss_and_grads(z)
            p[idx] = old
            num = (lp - lm) / 2e-6
            worst = max(worst, abs(num - grads[name][idx]) / max(1e-8, abs(num) + abs(grads[name][idx])))
    return worst


def to_onnx(model: LstmAutoencoder, lookback: int, n_features: int) -> onnx.ModelProto:
    """The forward pass as an ONNX graph (opset 18).

    Input `windows` float [B, lookback, F]; outputs `score` float [B, 1] and `reconstruction`
    float [B, lookback, F] (standardised space).
    """
    h = model.Wo.shape[0]
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(f32(model.mu), "mu"),
        numpy_helper.from_array(f32(model.sigma), "sigma"),
        numpy_helper.from_array(np.float32(1.0), "one"),
        numpy_helper.from_array(f32(model.enc.W[None]), "enc_W"),
        numpy_helper.from_array(f32(model.enc.R[None]), "enc_R"),
        numpy_helper.from_array(f32(np.concatenate([model.enc.b, np.zeros(4 * h)])[None]), "enc_B"),
        numpy_helper.from_array(f32(model.dec.W[None]), "dec_W"),
        numpy_helper.from_array(f32(model.dec.R[None]), "dec_R"),
        numpy_helper.from_array(f32(np.concatenate([model.dec.b, np.zeros(4 * h)])[None]), "dec_B"),
        numpy_helper.from_array(f32(model.Wo), "Wo"),
        numpy_helper.from_array(f32(model.bo), "bo"),
        numpy_helper.from_array(np.array([lookback, 1, 1], dtype=np.int64), "tile_repeats"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes12"),
    ]
    n = helper.make_node
    nodes = [
        n("Abs", ["windows"], ["abs"]),
        n("Add", ["abs", "one"], ["abs1"]),
        n("Log", ["abs1"], ["log"]),
        n("Sign", ["windows"], ["sign"]),
        n("Mul", ["sign", "log"], ["slog"]),
        n("Sub", ["slog", "mu"], ["centred"]),
        n("Div", ["centred", "sigma"], ["z"]),
        n("Transpose", ["z"], ["z_tbf"], perm=[1, 0, 2]),
        n("LSTM", ["z_tbf", "enc_W", "enc_R", "enc_B"], ["", "enc_h"], hidden_size=h),
        n("Tile", ["enc_h", "tile_repeats"], ["dec_in"]),
        n("LSTM", ["dec_in", "dec_W", "dec_R", "dec_B"], ["dec_y4"], hidden_size=h),
        n("Squeeze", ["dec_y4", "axis1"], ["dec_y"]),
        n("MatMul", ["dec_y", "Wo"], ["proj"]),
        n("Add", ["proj", "bo"], ["recon_tbf"]),
        n("Transpose", ["recon_tbf"], ["reconstruction"], perm=[1, 0, 2]),
        n("Sub", ["reconstruction", "z"], ["diff"]),
        n("Mul", ["diff", "diff"], ["sq"]),
        n("ReduceMean", ["sq", "axes12"], ["score_b"], keepdims=0),
        n("Unsqueeze", ["score_b", "axis1"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vigil_lstm_ae",
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["batch", lookback, n_features])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info(
                "reconstruction", TensorProto.FLOAT, ["batch", lookback, n_features]
            ),
        ],
        inits,
    )
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="vigil-models"
    )
    m.ir_version = 9  # readable by ONNX Runtime >= 1.16
    onnx.checker.check_model(m, full_check=True)
    return m
