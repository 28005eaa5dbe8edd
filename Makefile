# Shortcuts for the ./loupe script (which works without make).
.PHONY: run test setup lint format
run:
	./loupe run
test:
	./loupe test
setup:
	./loupe setup
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .
