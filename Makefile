# make run   - set up .venv and run the example pipeline (capital-quiz) over examples/countries.jsonl
#              through the default fallback chain (local vLLM -> llama.cpp -> OpenAI)
# make test  - set up .venv, lint, and run the test suite
# make lint  - ruff over the tree, mypy --strict over the package (scripts/lint.sh)
# make bench - run the benchmarks under bench/ (figures in README.md)
.PHONY: setup run lint test bench

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/inferline run capital-quiz --input examples/countries.jsonl \
		--output out/capital-quiz.jsonl --restart
	.venv/bin/python scripts/show.py out/capital-quiz.jsonl country answer

lint: setup
	bash scripts/lint.sh

test: setup lint
	.venv/bin/pytest

bench: setup
	for b in bench/*.py; do .venv/bin/python $$b || exit 1; done
