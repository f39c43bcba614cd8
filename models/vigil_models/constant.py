"""A constant-score model with the reference Isolation Forest's tensor contract (input
`features` FP32 [-1, 11], output `scores` FP32 [-1, 1]): `scores = features @ 0 + SCORE`. With
the forest's `anomalousWhen: Below, threshold: 0` it flags every window: the flooding candidate
of the rollout tests (a model that alerts on everything must be rolled back automatically).

Usage: python -m vigil_models.constant OUT.onnx [SCORE]   (default SCORE -1.0; needs `onnx`)
The committed ones: models/testdata/constant/{calm,calm-2,flood}.onnx = SCORE 1.0, 0.5, -1.0.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(score: float) -> onnx.ModelProto:
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 11])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 1])
    zeros = numpy_helper.from_array(np.zeros((11, 1), dtype=np.float32), "zeros")
    bias = numpy_helper.from_array(np.array([score], dtype=np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "zeros"], ["product"]),
            helper.make_node("Add", ["product", "bias"], ["scores"]),
        ],
        "constant_score",
        [features],
        [scores],
        [zeros, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    out = sys.argv[1]
    score = float(sys.argv[2]) if len(sys.argv) > 2 else -1.0
    onnx.save(build(score), out)
