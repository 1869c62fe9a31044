# make run   - set up .venv and answer the bundled questions through the default fallback chain
# make test  - set up .venv and run the test suite
# make bench - run the benchmarks under bench/ (figures in README.md)
.PHONY: setup run test bench

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/inferline infer --chain default --system "Answer in one short sentence." \
		< examples/questions.txt

test: setup
	.venv/bin/pytest

bench: setup
	for b in bench/*.py; do .venv/bin/python $$b || exit 1; done
