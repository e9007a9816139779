# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
KDEPLOY := $(VENV)/bin/kdeploy
# Pinned builds that install from local files on the reference machines (pip only, not uv/poetry).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_RECIPE ?= recipes/fashion_mnist_mlp.yaml

.PHONY: demo test format venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "==> creating $(VENV) and installing kdeploy (torch takes a few minutes the first time)"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e '.[dev]'
	touch $@

$(FASHION_DIR)/train-images-idx3-ubyte.gz:
	@echo "==> installing Fashion-MNIST from Debian (dataset-fashion-mnist)"
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  ($$SUDO apt-get install -y -qq dataset-fashion-mnist || \
	   ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist))

demo: venv $(FASHION_DIR)/train-images-idx3-ubyte.gz
	@echo "==> distill -> export -> quantize -> bench on Fashion-MNIST ($(DEMO_RECIPE))"
	$(KDEPLOY) run $(DEMO_RECIPE) --force

test: venv
	$(VENV)/bin/ruff check kdeploy tests benchmarks
	$(VENV)/bin/ruff format --check kdeploy tests benchmarks
	$(PY) -m pytest -q

format: venv
	$(VENV)/bin/ruff check --fix kdeploy tests benchmarks
	$(VENV)/bin/ruff format kdeploy tests benchmarks

clean:
	rm -rf runs .pytest_cache
