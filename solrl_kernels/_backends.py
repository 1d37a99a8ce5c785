"""Which execution paths exist here, and why the others don't — one check used everywhere.

Paths (DESIGN §3): ``native`` (solrl_kernels._C, CUTLASS kernels), ``triton`` (Triton
kernels on a CUDA GPU; on CPU only in the interpreter, TRITON_INTERPRET=1), ``emulated``
(plain torch, everywhere).
"""

from __future__ import annotations

import functools
import importlib
import os

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


@functools.cache
def _load_native() -> tuple[bool, str]:
    """(loaded, why): import solrl_kernels._C, then the fakes of its ops (_native_ops).

    One step at a time, so that each failure gets its own cause: no _C module at all (never
    built), a _C that exists but does not load (built against another torch / CUDA), a _C that
    loads but lacks ops its fakes describe (built from an older checkout)."""
    name = f"{__package__}._C"
    try:
        importlib.import_module(name)  # registers torch.ops.solrl_kernels.*
    except ModuleNotFoundError as e:
        if e.name != name:  # _C exists; something it imports does not
            return False, f"solrl_kernels._C failed to load ({e}); rebuild against this torch"
        return False, (
            f"solrl_kernels._C is not built ({e}); build it with a CUDA torch and nvcc: "
            "pip install nvidia-cutlass==4.2.0.0 && pip install --no-build-isolation ."
        )
    except (ImportError, OSError) as e:  # built against another torch / CUDA
        return False, f"solrl_kernels._C failed to load ({e}); rebuild against this torch"
    try:
        from . import _native_ops  # noqa: F401  register_fake for the C++ ops
    except RuntimeError as e:  # loaded, but without the ops its fakes describe: a stale build
        return False, f"solrl_kernels._C is stale ({e}); rebuild it from this checkout"
    return True, "solrl_kernels._C loaded"


# torch.compile: constants computed eagerly. Traced, the first call would run _load_native's
# imports and op registrations inside Dynamo, which fails where _C is absent.
@torch._dynamo.assume_constant_result
def native_ops_available() -> bool:
    return _load_native()[0]


@torch._dynamo.assume_constant_result
def native_unavailable_reason() -> str:
    return _load_native()[1]


# the longest row csrc's NVFP4 row quantizer takes (csrc/launchers.h kNvfp4QuantizeRowsMaxK)
NVFP4_QUANTIZE_ROWS_MAX_K = 32768

# the sm90 FP8 GEMM's forced tile configurations (csrc/launchers.h Fp8TileSm90; -1: the op's
# default schedule), by the index _fp8_gemm_sm90_tile takes
FP8_GEMM_SM90_TILES = {-1: "heuristic", 0: "128x128x128_c1x2_coop", 1: "64x128x128_c1x1_pingpong",
                       2: "128x192x128_c1x2_coop", 3: "64x192x128_c1x2_pingpong"}

_ARCHS: tuple[str, ...] | None = None


@torch._dynamo.assume_constant_result  # torch.compile: a constant, not an op call to trace
def native_archs() -> tuple[str, ...]:
    """Kernel families compiled into solrl_kernels._C: a subset of ("sm90a", "sm100a")."""
    global _ARCHS
    if _ARCHS is None:
        _ARCHS = tuple(torch.ops.solrl_kernels.compiled_archs()) if native_ops_available() else ()
    return _ARCHS


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _probe_triton() -> tuple[bool, str]:
    try:
        import triton
    except ImportError as e:
        return False, f"triton is not installed ({e})"
    return True, f"triton {triton.__version__}"


# probed once at import, as a plain value: torch.compile traces the checks below cleanly
_TRITON = _probe_triton()


def _triton_import() -> tuple[bool, str]:
    return _TRITON


def triton_available(device: torch.device | str | None = None) -> bool:
    """True where Triton kernels can run on tensors of `device` (CUDA, or CPU interpreted)."""
    if not _triton_import()[0]:
        return False
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type == "cuda":
        return torch.cuda.is_available() or triton_interpreting()
    return dev.type == "cpu" and triton_interpreting()


def triton_unavailable_reason() -> str:
    ok, why = _triton_import()
    if not ok:
        return why
    if not torch.cuda.is_available():
        return "no CUDA GPU (set TRITON_INTERPRET=1 to run the kernels on CPU, slowly)"
    return why


def cuda_capability() -> tuple[int, int] | None:
    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


_CAPABILITY: dict[int, tuple[int, int]] = {}


@torch._dynamo.assume_constant_result  # torch.compile: a constant, not a query to trace
def _capability_of(index: int) -> tuple[int, int]:
    cap = _CAPABILITY.get(index)
    if cap is None:
        cap = _CAPABILITY[index] = tuple(torch.cuda.get_device_capability(index))
    return cap


def device_capability(device: torch.device) -> tuple[int, int]:
    """torch.cuda.get_device_capability(device) of a CUDA device, remembered per device (the
    query costs microseconds of host time, and every op asks)."""
    return _capability_of(device.index if device.index is not None else torch.cuda.current_device())


def plain_eager(*tensors: torch.Tensor | None) -> bool:
    """True when a Python torch.library op of ours may be skipped and its implementation
    called directly, with the same result: eager mode (not torch.compile / export tracing),
    no Python dispatch or torch-function mode active (FakeTensorMode, functionalization,
    make_fx), plain tensors (or Parameters), none of which needs autograd history. What it
    saves is the custom-op dispatcher's host time on every call; under tracing the op (with
    its fake implementation) is what must be seen."""
    if (torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled()
            or _get_current_dispatch_mode() is not None):
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or (grad and t.requires_grad):
            return False
    return True


def cuda_fp8_capable(device: torch.device) -> bool:
    """A CUDA device with FP8 (E4M3) support, sm_89 or newer (Ada, Hopper, Blackwell): what
    our Triton kernels need (FP8 conversions, FP8 tensor cores)."""
    return device.type == "cuda" and device_capability(device) >= (8, 9)


def backends_report() -> list[tuple[str, bool, str]]:
    """[(path, available, why)] for native, triton, emulated."""
    cap = cuda_capability()
    native_ok, native_why = _load_native()
    if native_ok:
        if cap is None:
            native_ok, native_why = False, "built, but no CUDA GPU is visible"
        elif cap[0] not in (9, 10):
            native_ok, native_why = False, f"built for sm_90a/sm_100a; this GPU is sm_{cap[0]}{cap[1]}"
        else:
            native_why = f"{native_why}; GPU sm_{cap[0]}{cap[1]} ({torch.cuda.get_device_name()})"
    triton_ok = triton_available("cuda")
    if torch.cuda.is_available():
        triton_why = _triton_import()[1]
    elif triton_interpreting() and triton_ok:
        triton_why = f"{_triton_import()[1]}, interpreter on CPU (for tests, not speed)"
    else:
        triton_why = triton_unavailable_reason()
    return [
        ("native", native_ok, native_why),
        ("triton", triton_ok, triton_why),
        ("emulated", True, f"plain torch {torch.__version__}, any device"),
    ]
