# Two commands on a fresh machine (Python 3.11 + pip):  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed only when the environment has no torch yet: on this machine the 2.13.0 CPU wheel lies
# on disk; on a GPU machine, install your CUDA build of torch first and it is kept.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= out/demo
DEMO_PROMPT ?= a red circle above a blue square

.PHONY: install install-test demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[text]"

install-test: install
	$(PY) -m pip install -q -e ".[text,test,video]"

# the main job: images for a prompt from the bundled default model (a PNG each, and a grid)
demo: install
	$(VENV)/bin/vqgen generate "$(DEMO_PROMPT)" -n 8 --grid --out $(DEMO_OUT)

test: install-test
	$(PY) -m pytest

clean:
	rm -rf $(VENV) out
