VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test lint bench bench-latency clean

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements.txt $(VENV)/.installed
	$(PIP) install -q -r requirements-dev.txt
	touch $@

run: PORT ?= 8000
run: $(VENV)/.installed  ## start gunicorn + gevent on 127.0.0.1:$(PORT) (demo provider); STREAMAPP_BIND wins
	STREAMAPP_BIND="$${STREAMAPP_BIND:-127.0.0.1:$(PORT)}" $(VENV)/bin/gunicorn -c conf/gunicorn.conf.py wsgi:app

test: $(VENV)/.installed-dev  ## run the whole suite
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

bench: $(VENV)/.installed-dev  ## run the benchmarks (about 10 minutes); results in bench/results/
	$(PY) bench/run.py

bench-latency: $(VENV)/.installed-dev  ## 50 tries of disconnect and cancel latency
	$(PY) bench/latency.py --tries 50 --store both
