"""CUDA numerics, decided once per pack and recorded with every network.

The published results are FP32 on CPU. On Ampere and Hopper GPUs PyTorch runs convolutions in TF32 by
default (`torch.backends.cudnn.conv.fp32_precision == "tf32"`: a 10-bit mantissa), and cuDNN picks its
algorithms by timing them, some of which are nondeterministic. So, for every pack on a CUDA device:

  * TF32 off (`"ieee"` for cuDNN convolutions and cuBLAS matmuls) unless `allow_tf32` (the sweep's
    `--allow-tf32`): the paper's FP32, at some speed;
  * cuDNN deterministic, no benchmark-mode algorithm search: the same network on the same GPU, run
    twice, gives the same weights.

`configure(device, allow_tf32)` applies that and returns what each network records (`NetworkResult`:
`tf32`, `device_name`, `torch_version`, `cuda_version`). On CPU nothing is changed (TF32 does not exist
there): `tf32` is "off".
"""
from __future__ import annotations

import platform
import warnings
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Numerics:
    """What a network records about the arithmetic that trained it."""
    tf32: str                 # "on" | "off"
    device_name: str          # the GPU's name, or the CPU's model
    torch_version: str
    cuda_version: str         # torch.version.cuda of the build ("" for a CPU-only build)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _set_tf32(allowed: bool) -> None:
    value = "tf32" if allowed else "ieee"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
            torch.backends.cudnn.conv.fp32_precision = value          # torch >= 2.9's per-backend API
            torch.backends.cuda.matmul.fp32_precision = value
        else:                                                          # the legacy flags
            torch.backends.cudnn.allow_tf32 = allowed
            torch.backends.cuda.matmul.allow_tf32 = allowed


def configure(device: torch.device | str, allow_tf32: bool = False) -> Numerics:
    """Decide the numerics of this process's training on `device` (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        _set_tf32(allow_tf32)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return Numerics("on" if allow_tf32 and device.type == "cuda" else "off", name, str(torch.__version__),
                    str(torch.version.cuda or ""))


def tf32_state() -> dict[str, str]:
    """The process's current TF32 and cuDNN settings (for a test or a device report)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
        matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    return {"conv": str(conv), "matmul": str(matmul), "cudnn_deterministic": str(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": str(torch.backends.cudnn.benchmark)}
