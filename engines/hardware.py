"""How much memory a model needs, from the seed's hardware tables, and whether it fits here.

The tables give GPU memory for the weights by model size at 16-bit and at 4-bit
(Q4); other precisions scale the 16-bit table by their bits. Engines call
``check_fits`` before loading, so a model that cannot fit is refused with the
reason (``EngineUnavailableError``) instead of crashing the process.

    estimate_memory(7, "bf16")     # 14e9 bytes
    estimate_memory(0.135, "q4")   # 6.75e7 bytes
    check_fits(estimate_memory(70, "fp16"), device="cpu", what="llama-70b")
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from pathlib import Path

from inferline.errors import ConfigurationError, EngineUnavailableError

GB = 10**9
GIB = 1024**3

#: Model size (billions of parameters) -> GPU VRAM in GB, BF16 / FP16 (the seed's table).
BF16_VRAM_GB: dict[float, float] = {1: 2, 3: 6, 7: 14, 13: 26, 33: 66, 70: 140}
#: Model size (billions of parameters) -> GPU VRAM in GB, Q4 (4-bit) (the seed's table).
Q4_VRAM_GB: dict[float, float] = {1: 0.5, 3: 1.5, 7: 3.5, 13: 6.5, 33: 16.5, 70: 35}

#: precision name -> (table, multiplier); names are matched case-insensitively.
_PRECISIONS: dict[str, tuple[dict[float, float], float]] = {
    **dict.fromkeys(("bf16", "bfloat16", "fp16", "float16", "half", "16bit"), (BF16_VRAM_GB, 1.0)),
    **dict.fromkeys(("fp32", "float32", "float", "32bit"), (BF16_VRAM_GB, 2.0)),
    **dict.fromkeys(("q8", "q8_0", "int8", "8bit", "fp8"), (BF16_VRAM_GB, 0.5)),
    **dict.fromkeys(("q4", "q4_0", "q4_1", "q4_k", "q4_k_m", "q4_k_s", "int4", "4bit", "nf4"),
                    (Q4_VRAM_GB, 1.0)),
}
#: headroom over the weights for activations, KV cache and runtime
OVERHEAD = 1.2


def estimate_memory(params_b: float, precision: str) -> int:
    """Bytes the weights of a ``params_b``-billion-parameter model need at ``precision``.

    Interpolates the seed's tables linearly; beyond their ends it scales per parameter.
    """
    try:
        table, factor = _PRECISIONS[precision.lower()]
    except KeyError:
        raise ConfigurationError(f"unknown precision {precision!r}; known: "
                                 f"{', '.join(sorted(_PRECISIONS))}", key="precision") from None
    return int(_interpolate(table, params_b) * factor * GB)


def _interpolate(table: dict[float, float], x: float) -> float:
    points = sorted(table.items())
    (x0, y0), (xn, yn) = points[0], points[-1]
    if x <= x0:
        return x * y0 / x0
    if x >= xn:
        return x * yn / xn
    (xa, ya), (xb, yb) = next(pair for pair in itertools.pairwise(points) if pair[1][0] >= x)
    return ya + (yb - ya) * (x - xa) / (xb - xa)


def available_memory(device: str = "cpu") -> int | None:
    """Free bytes on ``device`` ("cpu" reads /proc/meminfo; "cuda" asks torch); None if unknown."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def check_fits(required: int, *, device: str = "cpu", what: str = "model",
               engine: str = "") -> None:
    """Raise ``EngineUnavailableError`` if ``required`` bytes (plus headroom) won't fit."""
    free = available_memory(device)
    needed = int(required * OVERHEAD)
    if free is not None and needed > free:
        raise EngineUnavailableError(
            f"{what} does not fit: needs ~{needed / GIB:.1f} GiB on {device}, "
            f"{free / GIB:.1f} GiB available", engine=engine)


def params_from_hf_dir(path: Path) -> tuple[float, str] | None:
    """(billions of parameters, stored dtype) of an HF model dir, from its weight files."""
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    bytes_per = {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype, 2)
    return (size / bytes_per / 1e9, dtype) if size else None


def cuda_available() -> bool:
    """Whether a CUDA GPU is usable; cheap unless torch is already imported."""
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())
