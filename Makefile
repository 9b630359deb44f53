# The two Quickstart commands.  Both install first (torch 2.13.0, the CPU
# build, before anything that depends on torch, so pip never pulls a CUDA
# build), then run; the install is skipped while pyproject.toml is unchanged.
PYTHON ?= python3
STAMP := .installed

.PHONY: bench test install

bench: $(STAMP)
	$(PYTHON) -m speca_compile bench

# pytest exits 5 when it collected no tests: that is a failure, not a pass.
# --durations: the 30 slowest tests are listed, so the CI budget (under 30 min) is watched.
test: $(STAMP)
	$(PYTHON) -m pytest -q --durations=30; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $(STAMP)
