# ear-stream: `make demo` runs the main job on embedded defaults; `make test` runs every test.
# Both create .venv, install the pinned stack and build the C++/CUDA extension themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# one fat-binary arch list for setup.py, this Makefile and CMake (csrc/cuda_archs.py: sm_75 on + PTX)
ifndef TORCH_CUDA_ARCH_LIST
TORCH_CUDA_ARCH_LIST := $(shell $(PYTHON) csrc/cuda_archs.py)
endif
export TORCH_CUDA_ARCH_LIST
export MAX_JOBS ?= 2
EXT_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')

.PHONY: install build demo test lint typecheck format cmake-test cpp-deps redis promtool browser bench clean

$(VENV)/.deps: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	touch $@

# Editable install (entry point, metadata) without compiling, then an incremental in-place build
# of ear_stream._C: CUDAExtension when torch has CUDA and nvcc exists, else CppExtension.
$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(EXT_SOURCES)
	EAR_STREAM_BUILD=none $(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c "import ear_stream.model.ops as o; assert o.backend() == 'extension', o.extension_error(); print('ear_stream._C built, CUDA kernels:', o.extension_has_cuda())"
	touch $@

install build: $(VENV)/.built

redis:
	@command -v redis-server >/dev/null || { (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@redis-server --version

# promtool checks workers/monitoring/alerts.yml in the tests (Debian's prometheus package; the test skips without it)
promtool:
	@command -v promtool >/dev/null || { (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null || echo "promtool not installed: its test will skip"; }

# the review station's browser test drives Debian's chromium through chromium-driver (it skips without them)
browser:
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null || echo "chromium not installed: the browser test will skip"; }

# the AOTI consumer (tools/export/aoti_score.cpp) decodes images with stb_image (Debian's libstb-dev)
cpp-deps:
	@test -f /usr/include/stb/stb_image.h || { (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libstb-dev >/dev/null || echo "libstb-dev not installed: aoti_score is not built and its test skips"; }

demo: install redis
	$(VENV)/bin/ear-stream demo

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check ear_stream workers tests benchmarks tools setup.py
	$(VENV)/bin/ruff format --check ear_stream workers tests benchmarks tools setup.py

# mypy on ear_stream/model and ear_stream/inspect (pyproject.toml [tool.mypy])
typecheck: $(VENV)/.deps
	$(VENV)/bin/mypy

format: $(VENV)/.deps
	$(VENV)/bin/ruff check --fix ear_stream workers tests benchmarks tools setup.py
	$(VENV)/bin/ruff format ear_stream workers tests benchmarks tools setup.py

cmake-test: $(VENV)/.deps cpp-deps
	source $(VENV)/bin/activate && cmake -S . -B build/cmake -G Ninja >/dev/null && cmake --build build/cmake -j$(MAX_JOBS) && ctest --test-dir build/cmake --output-on-failure

test: install redis promtool browser lint typecheck cmake-test
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_ops.py

clean:
	rm -rf build ear_stream/_C*.so *.egg-info demo_out
