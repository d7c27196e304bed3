"""Dense inference sessions on an ONNX file, without torch: onnxruntime and OpenVINO, each set up
the way every engine is compared (the given intra-op threads, fp32). The benchmark, the
sparse engine's dense fallback and the memory probe's onnxruntime-only process use them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ort_session(model: str | Path | bytes, threads: int):
    """An onnxruntime CPU session with ``threads`` intra-op threads (one inter-op thread), the
    setting every engine is compared under."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def openvino_session(model: str | Path, threads: int):
    """OpenVINO's CPU plugin on a dense ONNX file: a callable (N, 3, S, S) float32 array → logits.
    fp32 is set explicitly: on CPUs with AVX-512 BF16 its default precision is bf16, a change of
    arithmetic rather than of engine. Raises ImportError where OpenVINO is not installed."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY"})
    request, output = compiled.create_infer_request(), compiled.output(0)
    return lambda x: request.infer({0: np.asarray(x, dtype=np.float32)})[output]
