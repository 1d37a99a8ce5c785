"""Build of solrl_kernels._C (CUTLASS kernels in csrc/) — reads flags, prunes sources.

Flags (environment):
  SKIP_CUDA_BUILD=1         install the pure-Python/Triton package only
  TORCH_CUDA_ARCH_LIST      e.g. "9.0a" or "9.0a;10.0a" (default: 9.0a, plus 10.0a when
                            nvcc >= 12.8)
  SOLRL_DISABLE_SM90=1      drop the Hopper (sm_90a) kernels
  SOLRL_DISABLE_SM100=1     drop the Blackwell (sm_100a) kernels
  NVCC_THREADS              nvcc --threads (default 2)
  CUTLASS_PATH              a CUTLASS checkout to use instead of the nvidia-cutlass wheel's headers

Sources are chosen by file name: csrc/*.cpp always, csrc/**/*_sm90.cu only for 9.0a,
csrc/**/*_sm100.cu only for 10.0a; each enabled family adds -DSOLRL_ENABLE_SM90/SM100.
Where the extension cannot be built, one line says why and the pure package installs.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _skip(reason: str):
    print(f"solrl_kernels: CUDA extension skipped: {reason}", file=sys.stderr, flush=True)
    return [], {}


def _nvcc_version(cuda_home: str) -> tuple[int, int] | None:
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _cutlass_includes() -> list[str] | None:
    root = os.environ.get("CUTLASS_PATH")
    if root:
        return [os.path.join(root, "include"), os.path.join(root, "tools", "util", "include")]
    try:
        import cutlass_library  # nvidia-cutlass wheel: headers under cutlass_library/source
    except ImportError:
        return None
    src = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
    inc = [os.path.join(src, "include"), os.path.join(src, "tools", "util", "include")]
    return inc if os.path.isdir(inc[0]) else None


def cuda_extension():
    """Returns (ext_modules, cmdclass); both empty where the extension cannot be built."""
    if os.environ.get("SKIP_CUDA_BUILD", "0") == "1":
        return _skip("SKIP_CUDA_BUILD=1")
    if not os.environ.get("CUDA_HOME") and os.path.isfile("/usr/local/cuda/include/cuda_runtime_api.h"):
        # an `nvcc` wrapper on PATH (e.g. /usr/local/bin) makes torch guess the wrong root
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return _skip(
            "torch is not importable in the build environment "
            "(build isolation? use `pip install --no-build-isolation .`)"
        )
    if torch.version.cuda is None:
        return _skip(f"torch {torch.__version__} is a CPU build (no CUDA)")
    if CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")) is None:
        return _skip("nvcc not found (set CUDA_HOME)")
    nvcc = _nvcc_version(CUDA_HOME)
    torch_cuda = tuple(int(v) for v in torch.version.cuda.split(".")[:2])
    if nvcc is None or nvcc[0] != torch_cuda[0]:
        return _skip(f"nvcc {nvcc} does not match torch's CUDA {torch.version.cuda}")
    if nvcc < (12, 3):
        return _skip(f"nvcc {nvcc} is too old for sm_90a CUTLASS kernels (need >= 12.3)")
    cutlass = _cutlass_includes()
    if cutlass is None:
        return _skip("CUTLASS headers not found (pip install nvidia-cutlass==4.2.0.0, or CUTLASS_PATH)")

    default_archs = ["9.0a"] + (["10.0a"] if nvcc >= (12, 8) else [])
    archs = [a.strip() for a in re.split(r"[;\s,]+", os.environ.get("TORCH_CUDA_ARCH_LIST", ""))]
    archs = [a for a in archs if a] or default_archs
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)  # cpp_extension reads it too
    sm90 = "9.0a" in archs and os.environ.get("SOLRL_DISABLE_SM90", "0") != "1"
    sm100 = "10.0a" in archs and os.environ.get("SOLRL_DISABLE_SM100", "0") != "1"

    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    defines = []
    for enabled, tag in ((sm90, "sm90"), (sm100, "sm100")):
        if enabled:
            sources += sorted(glob.glob(f"csrc/**/*_{tag}.cu", recursive=True))
            defines.append(f"-DSOLRL_ENABLE_{tag.upper()}")
    sources += sorted(
        s for s in glob.glob("csrc/**/*.cu", recursive=True) if not re.search(r"_sm\d+\.cu$", s)
    )
    nvcc_flags = [
        "-O3", "-std=c++17", "-lineinfo", "-DNDEBUG", "--expt-relaxed-constexpr",
        "--expt-extended-lambda", "--use_fast_math",
        f"--threads={os.environ.get('NVCC_THREADS', '2')}",
        "-DCUTLASS_ENABLE_GDC_FOR_SM90=1",
        *defines,
    ]
    ext = CUDAExtension(
        name="solrl_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc"), *cutlass],
        # cxx: torch picks the C++ standard its headers need (C++17 for 2.11, C++20 for 2.14);
        # the .cu files include no torch headers and stay C++17
        extra_compile_args={"cxx": ["-O3", *defines], "nvcc": nvcc_flags},
        py_limited_api=False,
    )
    print(
        f"solrl_kernels: building CUDA extension for {archs} with nvcc {nvcc} "
        f"({len(sources)} sources)", file=sys.stderr, flush=True,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
