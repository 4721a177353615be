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

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
INSTALL_REQUIRES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "timm>=1.0",
    "numpy>=1.26",
    "pillow>=10",
    "safetensors>=0.4",
    "pyarrow>=15",
    "click>=8.1",
    "tqdm>=4.66",
    "scikit-learn>=1.4",
    "scipy>=1.11",
    "pyyaml>=6",
    "jsonschema>=4",
    "redis>=5",
    "ray>=2.40",
    "prometheus-client>=0.20",
]


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

setup(
    name="ear-stream",
    version="0.1.0",
    description="EAR (Excision And Recovery) visual defect detection: fused ops, Redis stream workers, Ray.",
    packages=find_packages(include=["ear_stream", "ear_stream.*", "workers", "workers.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": ["pytest>=8", "ruff>=0.5"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["ear-stream=ear_stream.cli:main"]},
    zip_safe=False,
)
