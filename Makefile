# The two commands a newcomer needs (README): `make demo` and `make test`.
# Both set up everything first (Debian packages, .venv) through scripts/bootstrap.sh.
.PHONY: demo test lint format bootstrap real-engines

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/observer demo

# Real vLLM and llama.cpp for tests/test_real_engines.py, cached in ~/.cache/llm-observer (README,
# "Real engines in the test suite"). A failure here is reported, then those tests fail with the reason.
real-engines: bootstrap
	-.venv/bin/python scripts/real_engines.py install >/dev/null

test: bootstrap real-engines
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports --no-logo --no-cache
	.venv/bin/python -m pytest

# lint-imports: the layer contract in .importlinter (core <- components <- application, no cycles).
lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports --no-logo --no-cache

format: bootstrap
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .
