# One-command entry points (see README.md). Everything lives in .venv.
PYTHON ?= python3
VENV ?= .venv
# Extra index for torch, e.g. https://download.pytorch.org/whl/cpu on CPU machines whose
# default index serves the CUDA build of torch==2.13.0.
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(VENV)/bin/pip install --quiet -e ".[dev,ros]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/visa-edge demo --out out/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) out .pytest_cache
