# make run   - set up .venv and run the example pipeline on the bundled data
# make test  - set up .venv and run the test suite
# make bench - run the benchmarks under bench/ (figures in README.md)
.PHONY: setup run test bench

setup:
	bash scripts/setup.sh

run: setup
	rm -f out/capital-quiz.jsonl
	.venv/bin/inferline run pipelines/examples/capital-quiz.yaml \
		--input pipelines/examples/countries.jsonl --output out/capital-quiz.jsonl

test: setup
	.venv/bin/pytest

bench: setup
	for b in bench/*.py; do .venv/bin/python $$b || exit 1; done
