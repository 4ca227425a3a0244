"""Backend selection: explicit argument > ``OSF_SCAN_BACKEND`` > auto (fastest for the device)."""
from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

import torch

logger = logging.getLogger("osf.kernels")

BACKENDS = ("reference", "chunked", "triton", "cuda")
ENV_VAR = "OSF_SCAN_BACKEND"
_MODULES = {"reference": "osf.kernels.reference", "chunked": "osf.kernels.chunked",
            "triton": "osf.kernels.triton_scan", "cuda": "osf.kernels.cuda"}
_AUTO_ORDER = {"cuda": ("cuda", "triton", "chunked"), "cpu": ("chunked",)}


def _module(name: str) -> ModuleType | None:
    """Import a backend module; None when its dependency (triton, mamba_ssm) is missing."""
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as err:
        logger.debug("kernel backend %s unavailable: %s", name, err)
        return None


def is_available(name: str, device: torch.device | str) -> bool:
    """Whether backend ``name`` can run on tensors on ``device``."""
    device = torch.device(device)
    if name == "reference":
        return True
    mod = _module(name)
    return mod is not None and mod.is_available(device)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``, fastest first (``reference`` last)."""
    device = torch.device(device)
    order = _AUTO_ORDER.get(device.type, ("chunked",))
    names = [n for n in order if is_available(n, device)]
    names += [n for n in BACKENDS if n not in names and is_available(n, device)]
    return names


def resolve(backend: str, device: torch.device, op: str) -> ModuleType:
    """The backend module to run ``op`` on ``device``; raises ValueError/RuntimeError if impossible."""
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "").strip() or "auto"
    if backend not in BACKENDS and backend != "auto":
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {('auto',) + BACKENDS}"
                         f" (argument `backend=` or env var {ENV_VAR})")
    if backend == "auto":
        backend = next(n for n in _AUTO_ORDER.get(device.type, ("chunked",)) + ("chunked",)
                       if is_available(n, device))
    elif not is_available(backend, device):
        raise RuntimeError(_unavailable_reason(backend, device))
    logger.debug("osf.kernels.%s: backend %s on %s", op, backend, device)
    return _module(backend)


def _unavailable_reason(name: str, device: torch.device) -> str:
    if name == "triton":
        if _module("triton") is None:
            return "kernel backend 'triton' needs the `triton` package (pip install osf[triton])"
        return f"kernel backend 'triton' needs CUDA tensors (got {device}) or TRITON_INTERPRET=1 for CPU testing"
    if name == "cuda":
        return (f"kernel backend 'cuda' needs CUDA tensors (got {device}) and the mamba_ssm + causal_conv1d"
                " packages (pip install osf[cuda])")
    return f"kernel backend {name!r} is not available on {device}"


def describe() -> str:
    """One line naming the backend ``auto`` picks per device, e.g. for ``osf inspect`` and logs."""
    forced = os.environ.get(ENV_VAR, "").strip()
    parts = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        chosen = forced or next(n for n in _AUTO_ORDER[dev] + ("chunked",) if is_available(n, dev))
        parts.append(f"{dev}: {chosen}")
    suffix = f" (forced by {ENV_VAR})" if forced else ""
    return "selective scan backends - " + ", ".join(parts) + suffix
