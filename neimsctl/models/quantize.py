"""Inference precision of a loaded model: ``fp32``, ``bf16`` (weights cast) or ``int8``.

- ``fp32``: the model as trained.
- ``bf16``: every floating-point parameter and buffer cast to bfloat16 (the student casts its
  input to the LayerNorm's dtype, so the whole forward pass runs in bf16; outputs are
  converted back to float32 by ``to_linear``).
- ``int8``: dynamic quantization of the ``nn.Linear`` layers (weights int8 per tensor,
  activations quantized per batch on the fly; :func:`torch.ao.quantization.quantize_dynamic`);
  the rest (LayerNorm, gate softmax, embeddings) stays fp32. CPU only. Layers named in
  :data:`INT8_SKIP` stay fp32: the student's expert ``down`` projections read
  ``LayerNorm(sparse fingerprint)``, i.e. thousands of values near -0.2 and a few outliers of
  +10..+50, and 8-bit per-tensor activation quantization rounds the bulk to a biased value
  (quantizing them too dropped the mean cosine to fp32 from 0.999 to 0.86 on held-out MassBank
  molecules; tools/bench/bench_predict.py).
- ``auto``: :func:`resolve_precision` picks; see its docstring for the rule.

Examples
--------
>>> model = apply_precision(model, "int8")      # doctest: +SKIP
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from neimsctl.errors import ConfigError

__all__ = ["PRECISIONS", "apply_precision", "resolve_precision"]

PRECISIONS = ("fp32", "bf16", "int8", "auto")
#: What ``auto`` means for the student on a CPU when the model card says nothing, by workload.
#: Measured with tools/bench/bench_predict.py on a full-size student (48.6M parameters, shared
#: 2-core Xeon with avx512_bf16): batch 1 / 1 thread: fp32 14.9 ms, bf16 16.0 ms, int8 8.3 ms;
#: batch 1024 / 2 threads: fp32 415, bf16 1022, int8 599 molecules/s; mean cosine to fp32 on
#: held-out MassBank molecules: bf16 0.9997, int8 0.9963 (both >= MIN_COSINE).
#: Session 2, shipped compact student (9.7M), `predict --jobs 2`: bf16 no faster end to end
#: (20k MOSES: 10.9 s vs fp32 10.6 s) and its RSS grew with the input (60k molecules: 1.06 GB vs
#: 0.51 GB for fp32): oneDNN keeps a bf16 kernel per matmul shape, and the experts' row counts
#: change with every block. Session 4: :func:`neimsctl.nn.moe.dispatch` pads the experts' rows
#: to multiples of 64 in CPU bf16 inference; memory is then flat (0.47 GB after 100k molecules,
#: 1 thread, vs 1.56 GB unpadded) and prediction + MSP formatting take 0.082 ms/molecule vs
#: 0.125 ms in fp32: batches run in bf16 where the CPU has native bf16, else fp32.
#: Session 8: ``auto`` no longer depends on the batch size, so ``neimsctl predict`` and the
#: Python API give the same spectra for the same input (issue 15); int8's single-molecule
#: latency gain (API p50 1.50 vs 1.82 ms for bf16, BENCHMARKS.md) stays one option away.
AUTO_STUDENT = "bf16"
#: Linear layers (by name suffix) that int8 leaves in fp32, per architecture (see above).
INT8_SKIP = {"student": (".down",)}
#: ``auto`` accepts a faster precision only when its predictions keep this mean cosine to fp32.
MIN_COSINE = 0.995


def cpu_flags() -> str:
    """The start of ``/proc/cpuinfo`` (its first CPU's flags; empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return fh.read(1 << 16)
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16``, Linux)."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, *, arch: str, device: torch.device,
                      card: dict | None = None) -> str:
    """Turn ``auto`` into a concrete precision; check the others.

    Rule for ``auto`` (pick the fastest precision whose predictions hold, i.e. keep a mean
    cosine >= :data:`MIN_COSINE` to fp32 on held-out molecules):

    1. the model card's ``precision`` when it names one (the shipping pipeline re-checks the
       rule on the test split of the shipped model and records the result);
    2. GPU, or not the student: ``fp32``;
    3. student on a CPU: ``bf16`` (:data:`AUTO_STUDENT`) when the CPU computes bf16 natively
       (:func:`cpu_has_bf16`), else ``fp32``.

    The rule does not look at the batch size or the caller: the CLI and the API resolve alike.

    Raises
    ------
    ConfigError
        An unknown precision, or ``int8`` on a non-CPU device.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        chosen = (card or {}).get("precision")
        if chosen in ("fp32", "bf16", "int8"):
            precision = chosen
        elif device.type != "cpu" or arch != "student":
            precision = "fp32"
        else:
            precision = AUTO_STUDENT if cpu_has_bf16() else "fp32"
        if precision == "int8" and device.type != "cpu":
            precision = "fp32"
    if precision == "int8" and device.type != "cpu":
        raise ConfigError("precision int8 (dynamic quantization) runs on the CPU only; "
                          "use --device cpu or --precision fp32/bf16")
    return precision


def apply_precision(model: nn.Module, precision: str, *, arch: str | None = None) -> nn.Module:
    """The eval-mode model converted to ``precision`` (``fp32``, ``bf16`` or ``int8``).

    Every precision converts ``model`` in place (``int8`` swaps its Linear layers for
    quantized ones) and returns it.
    ``arch`` (default: ``model.arch``) selects the layers int8 skips (:data:`INT8_SKIP`).

    Raises
    ------
    ConfigError
        ``precision`` is not one of the concrete choices (resolve ``auto`` first).
    """
    model = model.eval()
    if precision == "fp32":
        return model.float()
    if precision == "bf16":
        return model.to(torch.bfloat16)
    if precision == "int8":
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        skip = INT8_SKIP.get(arch or getattr(model, "arch", ""), ())
        spec = {name: default_dynamic_qconfig for name, mod in model.named_modules()
                if isinstance(mod, nn.Linear) and not name.endswith(skip)}
        with warnings.catch_warnings():  # torch 2.x marks eager-mode quantization deprecated
            warnings.simplefilter("ignore")
            return quantize_dynamic(model.float(), spec, dtype=torch.qint8, inplace=True)
    raise ConfigError(f"precision {precision!r}: expected fp32, bf16 or int8")
