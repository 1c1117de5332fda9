"""Where a frozen encoder's feature pass runs: eager PyTorch or ONNX Runtime (the image
backbones' :func:`bbam.vision.backbones.frozen_image_encoder`, the sentence encoder's
:func:`bbam.data.sentence.embed_texts`).

A frozen encoder only runs forward, in eval mode, on batches of one input size. Eager
PyTorch dispatches each depthwise and 1x1 convolution, batch norm and activation
separately and reaches about a tenth of a CPU's FP32 peak on the mobile backbones; ONNX
Runtime folds the batch norms into the convolutions and fuses the activations, and runs
the same network 4-6x faster on the same cores (``bench/images.py`` measures both).

* :func:`resolve_runtime`: ``auto`` -> ``onnx`` on a CPU when ``onnxruntime`` is installed,
  else ``torch`` (on a GPU the eager module runs on the device: ONNX Runtime's CUDA
  provider is not measured here).
* :func:`onnx_session`: exports a module once to an ``.onnx`` file (dynamic batch, the
  run's input shape; the file is keyed by the caller's key, the opset and the torch
  version, written atomically) and opens it with ONNX Runtime's CPU provider, one session
  per file in the process.
* :func:`runtime_id`: what a feature cache key records of the runtime, so features from
  the two runtimes (equal to about 1e-5) never mix.

Library layer: torch, and ``onnxruntime`` / ``onnx`` when the ``onnx`` runtime is used.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["RUNTIMES", "OPSET", "resolve_runtime", "open_encoder", "runtime_used", "runtime_id", "onnx_session", "OnnxEncoder",
           "onnx_available", "clear_sessions", "check_runtime"]

RUNTIMES = ("auto", "torch", "onnx")
OPSET = 17  # ONNX opset of the exported files (supported by every onnxruntime >= 1.14)
_SESSIONS: Dict[str, "OnnxEncoder"] = {}
_FELL_BACK: set = set()  # encoders (open_encoder's ``what``) that auto ran in torch in this process
T = TypeVar("T")
_LOCK = threading.Lock()


def onnx_available() -> bool:
    """Whether ``onnxruntime`` and ``onnx`` (the exporter writes through it) are importable."""
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def resolve_runtime(runtime: str, device: torch.device, key: str = "model.encoder.runtime") -> str:
    """``torch`` or ``onnx`` for ``runtime`` (one of :data:`RUNTIMES`) on ``device``;
    ``key`` names the config key in errors."""
    runtime = check_runtime(runtime, key)
    if runtime == "auto":
        return "onnx" if device.type == "cpu" and onnx_available() else "torch"
    if runtime == "onnx":
        if not onnx_available():
            raise ValueError(f"config key '{key}' is 'onnx' but onnxruntime is not installed: "
                             f"pip install onnxruntime onnx (both are in the vision and text extras)")
        if device.type != "cpu":
            raise ValueError(f"config key '{key}' is 'onnx', which runs on the CPU, but the device is {device}: "
                             f"use runtime=torch (or auto) on a GPU")
    return runtime


def open_encoder(asked: str, runtime: str, open_runtime: Callable[[str], T], what: str) -> Tuple[T, str]:
    """``(open_runtime(runtime), runtime)``; where ``asked`` is ``auto`` and the resolved
    ``onnx`` encoder cannot be opened (a module the exporter cannot write), a warning naming
    ``what`` and ``(open_runtime("torch"), "torch")`` instead. An ``onnx`` asked for
    explicitly raises. Callers key their caches by the runtime returned."""
    try:
        return open_runtime(runtime), runtime
    except Exception as err:
        if asked != "auto" or runtime != "onnx":
            raise
        warnings.warn(f"{what} cannot run in ONNX Runtime ({type(err).__name__}: {err}); running it in torch",
                      RuntimeWarning, stacklevel=3)
        _FELL_BACK.add(what)
        return open_runtime("torch"), "torch"


def runtime_used(asked: str, device: torch.device, what: str) -> str:
    """The runtime that computes ``what``'s features (the ``what`` of :func:`open_encoder`)
    when ``asked`` on ``device``: the resolved one, or ``torch`` where ``auto`` fell back
    in this process. What a run records beside the runtime it was asked for."""
    runtime = resolve_runtime(asked, device)
    return "torch" if runtime == "onnx" and asked == "auto" and what in _FELL_BACK else runtime


def check_runtime(value, key: str) -> str:
    """``value`` as one of :data:`RUNTIMES`, else an error naming config key ``key``."""
    if str(value) not in RUNTIMES:
        raise ValueError(f"config key '{key}' must be one of {', '.join(RUNTIMES)}, got {value!r}")
    return str(value)


def runtime_id(runtime: str) -> Optional[str]:
    """What a cache key holds of a resolved runtime: None for ``torch`` (keys made before the
    runtime existed stay valid), ``onnxruntime-<version>`` for ``onnx``."""
    if runtime == "torch":
        return None
    import onnxruntime

    return f"onnxruntime-{onnxruntime.__version__}"


class OnnxEncoder:
    """An ONNX Runtime session of one exported module: ``encoder(x)`` for float32 ``x``
    ``[B, ...]`` on the CPU returns the module's first output as a float32 tensor.

    ``threads``: intra-op threads (torch's count: the same cores as the eager module)."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        # idle threads sleep instead of spinning: the DataLoader workers decoding the next
        # batch share these cores (measured: cold photo features x1.3 on 2 cores)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *xs: Tensor) -> Tensor:
        feeds = {name: np.ascontiguousarray(x.detach().cpu().numpy()) for name, x in zip(self.inputs, xs)}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def _export(module: nn.Module, example: Sequence[Tensor], names: Sequence[str], dynamic: Dict[str, Dict[int, str]],
            path: Path, rewrite: Optional[Callable[[str], None]] = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter: it keeps the module's exact arithmetic and needs no
            # onnxscript; its deprecation and tracer warnings say nothing about this module
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(example), tmp, input_names=list(names), output_names=["output"],
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)
        if rewrite is not None:  # e.g. ONNX Runtime's transformer fusions, written over the file
            rewrite(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def onnx_session(module_fn: Callable[[], nn.Module], example: Sequence[Tensor], key: str, folder: Path,
                 label: str, names: Sequence[str] = ("input",), dynamic_dims: Optional[Dict[str, Dict[int, str]]] = None,
                 threads: Optional[int] = None, rewrite: Optional[Callable[[str], None]] = None,
                 rewrite_id: str = "") -> OnnxEncoder:
    """The :class:`OnnxEncoder` of the module ``module_fn()`` (called only when the file is
    not cached yet; in eval mode) exported with ``example`` inputs.

    Args:
        module_fn: builds the module to export (e.g. the frozen backbone).
        example: example inputs; their shapes fix every dimension not in ``dynamic_dims``.
        key: what identifies the module and its input shape (weights, size); the file name
            adds :data:`OPSET` and the torch version.
        folder: where ``<label>-<hash>.onnx`` is cached.
        names: the inputs' names; ``dynamic_dims``: ``{name: {dim: "label"}}`` (default: the
            first dimension of every input, the batch).
        threads: intra-op threads (default: ``torch.get_num_threads()``).
        rewrite: applied to the exported file before it is cached (``rewrite_id`` names it
            in the file's key).
    """
    meta = {"key": key, "opset": OPSET, "torch": torch.__version__, "exporter": "torchscript-1", "rewrite": rewrite_id}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(folder).expanduser() / "onnx" / f"{label}-{digest}.onnx"
    threads = torch.get_num_threads() if threads is None else int(threads)
    cache_key = f"{path}|{threads}"
    dynamic = dynamic_dims if dynamic_dims is not None else {n: {0: "batch"} for n in names}

    def export() -> None:
        _export(module_fn().eval(), example, names, {**dynamic, "output": {0: "batch"}}, path, rewrite)

    with _LOCK:
        encoder = _SESSIONS.get(cache_key)
        if encoder is not None:
            return encoder
        if not path.is_file():
            export()
        try:
            encoder = OnnxEncoder(path, threads)
        except Exception as err:  # a truncated or foreign file: export again once
            warnings.warn(f"ONNX file {path} is unreadable ({type(err).__name__}); exporting it again",
                          RuntimeWarning, stacklevel=2)
            export()
            encoder = OnnxEncoder(path, threads)
        _SESSIONS[cache_key] = encoder
        return encoder


def clear_sessions() -> None:
    """Drop every open ONNX Runtime session of the process (and forget its fallbacks to torch)."""
    with _LOCK:
        _SESSIONS.clear()
        _FELL_BACK.clear()
