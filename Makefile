# The two commands a newcomer needs (README): `make demo` and `make test`.
# Both set up everything first (Debian packages, .venv) through scripts/bootstrap.sh.
.PHONY: demo test lint format bootstrap

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/observer demo

test: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: bootstrap
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .
