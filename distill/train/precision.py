"""Which number format training computes in (``--precision``): bfloat16 where the CPU is faster in it.

A CPU with bfloat16 matrix units (x86 AMX, and on some chips AVX512-BF16; the Arm BF16
extension) multiplies bfloat16 matrices faster than float32 ones; without them PyTorch
emulates bfloat16 and it is much slower. The flags alone do not settle it: on a Xeon whose
hypervisor exposes AVX512-BF16 but not AMX, PyTorch's bfloat16 matmul (oneDNN) ran at half
the float32 speed (bench/bench_training.py measures both peaks). So ``auto`` takes bfloat16
only when the CPU has the instructions *and* a short matmul probe (~0.3 s) runs faster in
bfloat16 than in float32; otherwise float32, and the reason is printed.

bfloat16 is mixed precision, the same recipe on both backends: the frozen base weights, the
LoRA weights and the optimizer state stay float32, and ``torch.autocast`` runs the matmuls in
bfloat16 (TRL's ``bf16=True``, which on CPU is accelerate's CPU autocast). Loss, softmax and
norms stay float32 under autocast, so the loss curve follows float32's. On a GPU nothing
changes: the backends keep what Unsloth/TRL pick (bf16 where the card has it, else fp16).
"""
from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass

from distill.io import StageError

PRECISIONS = ("auto", "bf16", "fp32")
# x86 flags (Linux /proc/cpuinfo names) that mean native bfloat16 dot products.
X86_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# bfloat16 must beat float32 by this factor in the probe: AMX gives 2-8x, emulation 0.01-0.5x,
# so the margin only has to absorb timing noise on a busy machine.
MIN_SPEEDUP = 1.2


@dataclass(frozen=True)
class Precision:
    """What training computes in, and why (printed, and stored in distill_config.json)."""

    compute: str  # "bf16", "fp16" or "fp32": the dtype of the matmuls
    device: str  # "cpu", "cuda" or "mps"
    reason: str

    @property
    def autocast_bf16(self) -> bool:
        return self.compute == "bf16"

    @property
    def autocast_fp16(self) -> bool:
        return self.compute == "fp16"

    def to_dict(self) -> dict:
        return asdict(self)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="ignore") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.lower().split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_instructions() -> tuple[bool, str]:
    """(does the CPU have bfloat16 dot-product instructions?, the evidence in a few words)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False, "this PyTorch build has no oneDNN, which runs CPU bfloat16 matmuls"
    flags = cpu_flags()
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        if "bf16" in flags:
            return True, "the CPU has the Arm BF16 extension (bf16 in /proc/cpuinfo)"
        return False, "the CPU has no Arm BF16 extension, so bfloat16 would be emulated (slower than float32)"
    found = [f for f in X86_BF16_FLAGS if f in flags]
    if found:
        return True, f"the CPU has {' and '.join(found)}"
    if not flags:
        # No /proc/cpuinfo (macOS, Windows): PyTorch's own CPUID probe (x86 only).
        probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        if any(p is not None and p() for p in probes):
            return True, "PyTorch reports AVX512-BF16 or AMX on this CPU"
    return False, (f"the CPU has neither {' nor '.join(X86_BF16_FLAGS)}, so bfloat16 would be emulated "
                   "(slower than float32)")


def matmul_gflops(dtype, m: int = 1024, k: int = 1024, n: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of one (m x k) @ (k x n) matmul in ``dtype`` on the current threads.

    Best-of rather than the mean: on a shared machine the fastest run is the one least
    disturbed by other processes, so it is the closest to what the hardware does.
    """
    import time

    import torch

    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)  # first call: kernel selection and weight reordering
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9


@functools.cache
def bf16_speedup() -> float:
    """bfloat16 over float32 matmul speed on this CPU, interleaved so load on the machine hits both."""
    import torch

    bf, fp = [], []
    for _ in range(2):
        fp.append(matmul_gflops(torch.float32))
        bf.append(matmul_gflops(torch.bfloat16))
    return max(bf) / max(fp)


def cpu_bf16() -> tuple[bool, str]:
    """(is bfloat16 the faster choice on this CPU?, why): the instructions, then a timing probe."""
    native, why = cpu_bf16_instructions()
    if not native:
        return False, why
    ratio = bf16_speedup()
    if ratio >= MIN_SPEEDUP:
        return True, f"{why} and a bfloat16 matmul ran {ratio:.1f}x as fast as float32"
    return False, (f"{why}, but a bfloat16 matmul ran only {ratio:.2f}x as fast as float32 here "
                   f"(no AMX exposed?)")


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve(choice: str) -> Precision:
    """The precision ``--precision choice`` means on this machine; StageError if it cannot run here."""
    import torch

    if choice not in PRECISIONS:
        raise StageError(f"--precision must be one of {', '.join(PRECISIONS)} (got {choice!r})")
    dev = _device()
    if choice == "fp32":
        return Precision("fp32", dev, "--precision fp32")
    if dev == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", dev, "CUDA GPU with bfloat16")
        if choice == "bf16":
            raise StageError("--precision bf16: this GPU has no bfloat16; use --precision auto (float16) or fp32")
        return Precision("fp16", dev, "CUDA GPU without bfloat16: float16 mixed precision")
    if dev == "mps":
        if choice == "bf16":
            raise StageError("--precision bf16 is not supported on Apple MPS here; use --precision auto or fp32")
        return Precision("fp32", dev, "Apple MPS: float32")
    if choice == "bf16":
        native, why = cpu_bf16_instructions()
        if not native:
            raise StageError(f"--precision bf16: {why}; use --precision fp32 (or auto)")
        # Asked for explicitly: honoured even where the probe would say float32 is faster.
        return Precision("bf16", dev, f"--precision bf16 ({why})")
    fast, why = cpu_bf16()
    if fast:
        return Precision("bf16", dev, f"{why}: bfloat16 matmuls, float32 weights")
    return Precision("fp32", dev, f"float32 because {why}")
