# The two commands of README.md. Both set up a fresh machine first
# (scripts/setup.sh: system libraries, .venv, CPU PyTorch, the package).
VENV ?= .venv

.PHONY: run test setup lint

setup:
	bash scripts/setup.sh

# The main job: napari with the plugin's widgets docked on the sample movie.
run: setup
	$(VENV)/bin/napari-sbd

# The whole test suite, headless (pytest-xvfb starts a virtual X server).
test: setup
	$(VENV)/bin/python -m pytest

# Style and types (ruff rules and the mypy config in pyproject.toml); CI runs it after the tests.
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
