# Two commands on a fresh machine (Python 3.11 + pip):  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed only when the environment has no torch yet: on this machine the 2.13.0 CPU wheel lies
# on disk; on a GPU machine, install your CUDA build of torch first and it is kept.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= out/demo

.PHONY: install install-test demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[text]"

install-test: install
	$(PY) -m pip install -q -e ".[text,test]"

demo: install
	$(VENV)/bin/vqgen data shapes --out $(DEMO_OUT)/shapes --num 200 --size 64 --seed 1
	$(VENV)/bin/vqgen eval shapes --images $(DEMO_OUT)/shapes

test: install-test
	$(PY) -m pytest

clean:
	rm -rf $(VENV) out
