.PHONY: setup run test check
setup:
	./scripts/setup.sh
run: setup
	.venv/bin/spectral run
test:
	.venv/bin/python -m pytest -q
check:
	.venv/bin/ruff check spectral tests experiments app && .venv/bin/ruff format --check spectral tests experiments app && .venv/bin/pyright spectral && .venv/bin/python -m pytest -q
