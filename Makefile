# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
KDEPLOY := $(VENV)/bin/kdeploy
# Pinned builds that install from local files on the reference machines (pip only, not uv/poetry).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_RECIPE ?= recipes/mnist_demo.yaml
# the demo times batch 1 and 256 for at least 0.5 s per row (kdeploy's defaults: 1,32,256 and 1 s) to fit 5 minutes
DEMO_BENCH ?= --batch-sizes 1,256 --seconds 0.5
# MNIST for the demo: offline from ../shared/data on the reference machines (an existing KDEPLOY_DATA wins);
# elsewhere the recipe's `data.download: true` lets torchvision fetch it.
KDEPLOY_DATA ?= $(abspath $(wildcard ../shared/data))
export KDEPLOY_DATA

.PHONY: demo fashion-mnist test format venv clean

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

# the Fashion-MNIST recipes' data (the demo itself runs on MNIST)
fashion-mnist: $(FASHION_DIR)/train-images-idx3-ubyte.gz

demo: venv
	@echo "==> distill -> export -> quantize -> bench on MNIST ($(DEMO_RECIPE))"
	$(KDEPLOY) run $(DEMO_RECIPE) --force $(DEMO_BENCH)

# The optional extras' tests (timm models, TensorBoard, OpenVINO) run where pip can fetch the extras; elsewhere
# they are skipped, and the next `make test` tries again.
$(VENV)/.extras: $(VENV)/.installed
	@if $(PIP) install --quiet --retries 1 --timeout 30 -e '.[timm,tensorboard,openvino]'; then touch $@; \
	  else echo "==> optional extras (timm, tensorboard, openvino) not installed: their tests are skipped"; fi

test: venv $(VENV)/.extras
	$(VENV)/bin/ruff check kdeploy tests benchmarks
	$(VENV)/bin/ruff format --check kdeploy tests benchmarks
	$(PY) -m pytest -q

format: venv
	$(VENV)/bin/ruff check --fix kdeploy tests benchmarks
	$(VENV)/bin/ruff format kdeploy tests benchmarks

clean:
	rm -rf runs .pytest_cache
