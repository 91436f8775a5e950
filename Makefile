# The two commands of the README: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.camnet-installed
HVD    := $(VENV)/.horovod-installed
# the second environment: current TensorFlow + tf_keras, the tf_distribute engine, no Horovod (setup.cfg `modern`)
MODERN := .venv-modern
MSTAMP := $(MODERN)/.camnet-installed

.PHONY: system venv venv-modern horovod test lint demo bench clean container container-modern container-test container-packages

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml containers/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	$(BIN)/pip install -q -c containers/constraints.txt -e '.[cpu,ml,dev]'
	@touch $@

venv-modern: $(MSTAMP)

$(MSTAMP): setup.cfg pyproject.toml containers/constraints-modern.txt
	@test -x $(MODERN)/bin/python || $(PYTHON) -m venv $(MODERN)
	$(MODERN)/bin/pip install -q --upgrade pip wheel setuptools
	$(MODERN)/bin/pip install -q -c containers/constraints-modern.txt -e '.[modern,ml,dev]'
	@touch $@

# Horovod compiles against the installed TensorFlow (about 150 s once; pip caches the wheel).
# It needs OpenMPI, cmake and g++ from the system: apt-get install libopenmpi-dev openmpi-bin cmake g++
horovod: $(HVD)

$(HVD): $(STAMP)
	HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_PYTORCH=1 \
	HOROVOD_WITHOUT_MXNET=1 $(BIN)/pip install -q --no-build-isolation horovod==0.28.1
	@touch $@

# what .venv-modern runs: Layer 2 and 3 without the Horovod tests, and the tf_distribute ones elsewhere (SLURM)
MODERN_TESTS := tests/layer2 tests/layer3 tests/slurm/test_multinode.py -m 'not horovod and (tf_distribute or not multinode)'

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy layer1_patches layer2_training layer3_inference bench
	$(BIN)/hadolint containers/Dockerfile containers/Dockerfile.modern

# As root on Debian/Ubuntu, installs the system packages the full suite needs (SLURM, munge, OpenMPI, cmake, g++).
system:
	@bash .ci/system-packages

# With the local SLURM cluster when one can run here (root + slurm-wlm): slurm/local/with-cluster.sh. Then the
# Layer 2 and Layer 3 suites again in .venv-modern (TF 2.21 + tf_keras), where Horovod is not installed.
test: system $(STAMP) $(HVD) $(MSTAMP) lint
	bash slurm/local/with-cluster.sh $(BIN)/pytest -q
	bash slurm/local/with-cluster.sh $(MODERN)/bin/pytest -q $(MODERN_TESTS)

# The CPU image (Docker) and its Apptainer SIF, from containers/Dockerfile (containers/README.md); as root it starts
# a private dockerd and makes its Debian base images with mmdebstrap when no registry can be reached.
container: container-packages
	bash containers/build.sh

# The modern variant (containers/Dockerfile.modern): Debian 13, Python 3.13, TF 2.21 + tf_keras, no Horovod.
container-modern: container-packages
	bash containers/build-modern.sh

# The image's own tests (tests/container/): every layer through real `apptainer exec` as a non-root user, outputs
# equal to the host's, and one experiment submitted to the local SLURM cluster with `container:` set; then the
# modern variant's smoke test (tests/container/test_modern.py).
container-test: system container-packages $(STAMP) $(HVD)
	bash containers/test.sh

# Debian's docker.io only where no Docker engine answers and none is installed (it conflicts with Docker CE).
container-packages:
	@docker info >/dev/null 2>&1 || command -v dockerd >/dev/null || bash .ci/system-packages docker.io
	@command -v mmdebstrap >/dev/null || bash .ci/system-packages mmdebstrap

# the whole chain on a synthetic cohort + the bundled slide: local SLURM cluster when one answers, else here
demo: $(STAMP)
	$(BIN)/python -m layer3_inference pipeline demo

bench: $(STAMP)
	$(BIN)/python bench/layer1_extract.py

clean:
	rm -rf demo_out bench_out .pytest_cache .mypy_cache .ruff_cache
