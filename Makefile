# sonoedge: the two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run test lint models bench eval-biometry device-env dev-env system-deps clean screenshots \
	check-arm64 check-arm64-emulated bench-dashboard montage

# The device needs only the runtime, numpy, OpenCV, paho-mqtt, aiohttp (the midwife's page)
# cryptography (its TLS, the model bundles' signatures) and simplejpeg (a corrupt JPEG
# refused): pyproject.toml's dependencies.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.device: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

# Tests, the training/conversion toolchain and the collector's PostgreSQL driver.
$(VENV)/.dev: pyproject.toml $(VENV)/.device
	$(PIP) install -e '.[toolchain,central,dev]'
	touch $@

device-env: $(VENV)/.device
dev-env: $(VENV)/.dev

system-deps:
	bash scripts/install-system-deps.sh

run: device-env
	$(BIN)/sonoedge run --once

lint: dev-env
	$(BIN)/ruff check edge wire central quantize tests bench board scripts

# Two workers (pytest-xdist), a test file each at a time: many tests wait on servers,
# browsers and child processes, so two cut the suite's wall time on two cores (measured on a
# fresh clone, 2-core Xeon: 18 min 49 s in one process, 13 min 37 s and 13 min 33 s on two).
# A file's tests stay on one worker, in order, with their module's fixtures: split by test
# (`--dist load`), the PIN-lock tests met two devices and the second lock did not double.
# TEST_WORKERS=0 runs them in this one process. Three, not two, since 7 December: two left
# the cores 16% idle (vmstat 15, both workers waiting on servers, browsers and windows at
# once) and the suite took 1,321 s on a 2-core AMD EPYC; three filled most of it (8.5%
# idle) and took 1,189 s, with 52 more tests, every one passing (a fresh clone's `.ci/run`).
TEST_WORKERS ?= 3
test: dev-env system-deps lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The plane student is trained 1,600 steps, then resumed on 2,400- and 4,000-step cosine
# schedules, then on a 5,000-step one with the head-plane term (every HC18 frame is a head
# plane), then 400 steps of the class-map stage, which alone converts, checks and ships.
# Every stage has the feature term (the teacher's hidden layer, weight 4: 1.5.0). Training
# uses both cores (measured: 1.7-1.9x the steps per second of one thread).
# Each step's wall time is appended to build/logs/models_stages.tsv (scripts/stage_time.sh).
MODEL_THREADS ?= 2
STAGE := sh scripts/stage_time.sh build/logs/models_stages.tsv
PLANE := $(BIN)/python -m quantize.build_models --threads $(MODEL_THREADS) --low-res-steps 0 --feature-weight 4
models: dev-env
	$(STAGE) plane-1 $(PLANE) --until distil
	$(STAGE) plane-2 $(PLANE) --steps 2400 --continue-from 1600 --until distil
	$(STAGE) plane-3 $(PLANE) --steps 4000 --continue-from 2400 --until distil
	$(STAGE) plane-4 $(PLANE) --steps 5000 --continue-from 4000 --head-weight 0.7 --until distil
	$(STAGE) plane-maps $(PLANE) --maps-from 5000 --steps 400 --head-weight 0.7
	$(STAGE) segmenter $(BIN)/python -m quantize.build_segmenter --threads $(MODEL_THREADS)
	$(STAGE) quality-head $(BIN)/python -m quantize.build_quality_head --threads $(MODEL_THREADS)

# Head segmenters on validation patients: build/eval_biometry/report.md + bland_altman.png
eval-biometry: dev-env
	$(BIN)/python -m quantize.biometry_report

bench: dev-env system-deps
	$(BIN)/python -m bench

# The midwife's page at phone and tablet sizes, in headless Chromium: build/screenshots/*.png
screenshots: dev-env system-deps
	$(BIN)/python -m tests.web_screenshots
	$(BIN)/python -m tests.dashboard_screenshots

# The district dashboard at scale (also the last part of `make bench`): seeds 50 clinics x
# 2 years into SQLite and PostgreSQL, times every page, and ingestion with the dashboard loaded
bench-dashboard: dev-env system-deps
	$(BIN)/python -m bench.dashboard

# arm64 (issue 16): the device install resolves on linux/aarch64 from wheels alone (about 5 s);
# and `sonoedge score` on the 13 example screens under an emulated arm64 Debian gives the
# same planes as here (about 75 s from scratch, root; the rootfs is cached in build/).
# `make test` runs both (tests/test_arm64.py, tests/test_score_on_emulated_arm64.py).
check-arm64: device-env
	$(BIN)/python scripts/check_arm64.py

check-arm64-emulated: device-env
	bash scripts/arm64_emulated.sh

# Synthesised plane images, a row per class: build/plane_student/seed0/synth_montage.png
montage: dev-env
	$(BIN)/python -m quantize.montage

clean:
	rm -rf build .cache .pytest_cache .ruff_cache
