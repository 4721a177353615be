"""The one list of CUDA architectures ear_stream._C is built for: setup.py, the Makefile and CMake read it.

Every architecture from Turing (sm_75) on that the installed ``nvcc`` can
compile, as real code (T4, A100, A10/A30, L4/L40/Ada, H100/H200, Blackwell
B200/B300/RTX 50), plus PTX of the newest so that a GPU newer than the toolkit
JIT-compiles it. Embedded parts (Jetson sm_87/88, Thor sm_110) are left out.
Without ``nvcc`` (CPU-only machines) the list still names the data-centre set.

    python csrc/cuda_archs.py                 # 7.5;8.0;…;12.1+PTX   (TORCH_CUDA_ARCH_LIST)
    python csrc/cuda_archs.py --format cmake  # 75-real;…;121        (CMAKE_CUDA_ARCHITECTURES)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

WANTED = ("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "10.3", "12.0", "12.1")
WITHOUT_NVCC = ("7.5", "8.0", "8.6", "8.9", "9.0")


def toolkit_archs(nvcc: str | None = None) -> set[str] | None:
    """``{"7.5", "10.0", …}`` from ``nvcc --list-gpu-arch``; None when nvcc is missing."""
    nvcc = (
        nvcc
        or shutil.which("nvcc")
        or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    )
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {f"{int(m[:-1])}.{m[-1]}" for m in re.findall(r"compute_(\d+)", out)}


def arch_list() -> list[str]:
    known = toolkit_archs()
    return [a for a in WANTED if a in known] if known else list(WITHOUT_NVCC)


def torch_format(archs: list[str]) -> str:
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


def cmake_format(archs: list[str]) -> str:
    codes = [a.replace(".", "") for a in archs]
    return ";".join([f"{c}-real" for c in codes[:-1]] + [codes[-1]])  # the newest: real + virtual (PTX)


if __name__ == "__main__":
    archs = arch_list()
    print(cmake_format(archs) if "--format" in sys.argv and sys.argv[-1] == "cmake" else torch_format(archs))
