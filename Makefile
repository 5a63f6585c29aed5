.PHONY: setup run test check
setup:
	./scripts/setup.sh
run: setup
	.venv/bin/spectral run
test:
	.venv/bin/python -m pytest -q
check:
	.venv/bin/ruff check spectral tests experiments app benchmarks && .venv/bin/ruff format --check spectral tests experiments app benchmarks && .venv/bin/pyright spectral app experiments benchmarks && .venv/bin/mkdocs build --strict -q -d "$$(mktemp -d)" && .venv/bin/python -m pytest -q
