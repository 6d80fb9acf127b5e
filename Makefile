.PHONY: test lint smoke bench
test:
	pytest -q
lint:
	ruff check . && ruff format --check . && mypy pgolf_core
smoke:
	pgolf run recipes/pr414.toml --smoke
bench:
	python benchmarks/bench_baseline_cpu.py --write
