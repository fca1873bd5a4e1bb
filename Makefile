# Two commands for a new user (see README):
#   make run    install what is missing, build Release, start the server
#   make test   install what is missing, build, run every test through ctest
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
SERVER_FLAGS ?=

.PHONY: all deps test-deps build run test load bench fuzz lint clean

all: build

deps:
	scripts/install-deps.sh build

test-deps:
	scripts/install-deps.sh build test fuzz

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: deps $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS)

run: build
	$(BUILD_DIR)/bin/weightgate-server $(SERVER_FLAGS)

test: test-deps build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 900

# The full load and fault test (two replicas, 64 fetch streams, SIGKILL), then
# the hostile-upload storm of `make test` ten times longer; both print figures.
load: build
	cd tests/load && WG_LOAD=full WG_SOURCE_DIR=$(CURDIR) WG_BINARY_DIR=$(CURDIR)/$(BUILD_DIR) \
		/usr/bin/python3 -m unittest -v load_test
	cd tests/integration && WG_HOSTILE_UPLOADS=2000 WG_SOURCE_DIR=$(CURDIR) \
		WG_BINARY_DIR=$(CURDIR)/$(BUILD_DIR) PYTHONPATH=$(CURDIR)/$(BUILD_DIR)/python:. \
		PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 -m unittest -v test_hostile.HostileStormTest

bench: build
	tests/bench/run_all.sh $(BUILD_DIR)

fuzz:
	scripts/install-deps.sh build fuzz
	tests/fuzz/run.sh $(FUZZ_SECONDS)

# clang-format over every tracked C++ file (tables are fenced with clang-format off/on).
lint:
	scripts/install-deps.sh lint
	scripts/lint.sh

clean:
	rm -rf $(BUILD_DIR)
