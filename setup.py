"""Build of ear-stream and its C++/CUDA extension ``ear_stream._C``.

The extension is built with ``CUDAExtension`` when torch is a CUDA build and a
CUDA toolkit (nvcc) is found — no GPU is needed to compile — and with
``CppExtension`` otherwise. ``EAR_STREAM_BUILD`` forces a choice:
``cuda``, ``cpu`` or ``none`` (pure Python; the ops fall back to the reference).
Build without isolation so the extension compiles against the installed torch:
``pip install --no-build-isolation -e .`` (``make install`` does this).
"""

from __future__ import annotations

import glob
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(*patterns: str) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        found += sorted(glob.glob(os.path.join("csrc", pattern)))
    return found


def _pip_cuda_includes() -> list[str]:
    """Headers of the CUDA libraries that torch's wheels ship (cusparse.h etc. are not in every toolkit)."""
    try:
        import nvidia
    except ImportError:
        return []
    dirs: list[str] = []
    for root in getattr(nvidia, "__path__", []):
        dirs += sorted(glob.glob(os.path.join(root, "*", "include")))
    return dirs


def _cuda_arch_list() -> str:
    """The fat-binary list of csrc/cuda_archs.py (Turing on, plus PTX of the newest): one list for every build."""
    import runpy

    mod = runpy.run_path(os.path.join(HERE, "csrc", "cuda_archs.py"))
    return mod["torch_format"](mod["arch_list"]())


def extension_modules() -> tuple[list, dict]:
    mode = os.environ.get("EAR_STREAM_BUILD", "auto").lower()
    if mode == "none":
        return [], {}
    if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda/lib64"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"  # nvcc may sit in /usr/local/bin, the libraries do not
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:
        # pip's default isolated build has no torch: fail loudly instead of installing a package that
        # silently runs the slow reference ops (torchvision-style extensions do the same)
        raise SystemExit(
            f"ear-stream: torch is not importable at build time ({exc}). The C++/CUDA extension is built "
            "against the installed torch: install torch==2.14.1 first, then `pip install --no-build-isolation .` "
            "(or `make install`). EAR_STREAM_BUILD=none installs without the extension (reference ops only)."
        ) from exc
    want_cuda = mode == "cuda" or (mode == "auto" and torch.version.cuda is not None and CUDA_HOME is not None)
    cxx = ["-O3"]
    sources = _sources("ear.cpp", "runtime.cpp", "ops/*.cpp", "ops/cpu/*.cpp")
    include = [os.path.join(HERE, "csrc")]
    if want_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _cuda_arch_list())
        ext = CUDAExtension(
            "ear_stream._C",
            sources + _sources("ops/cuda/*.cu"),
            include_dirs=include + _pip_cuda_includes(),
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]},
        )
    else:
        ext = CppExtension("ear_stream._C", sources, include_dirs=include, extra_compile_args={"cxx": cxx})
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()

# project metadata, dependencies and the console script live in pyproject.toml; this file builds the extension
setup(ext_modules=ext_modules, cmdclass=cmdclass, zip_safe=False)
