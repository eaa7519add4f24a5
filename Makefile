# ftvm — build, test, benchmark and demo targets.
#
#   make demo    the main job (see README.md for what it shows)
#   make test    everything CI runs: tool check, vet, guests, race tests
#
# Every target works on a fresh machine: missing tools are named by
# scripts/check-tools with the command that installs them.

GO        ?= go
GOFLAGS   ?=
PKGS      ?= ./...
TEST_TIMEOUT ?= 30m
BENCH     ?= .
BENCHTIME ?= 1s
BENCHCOUNT ?= 1

.PHONY: all build test vet unit guests bench demo check-tools fuzz clean kvm-test

all: build

build:
	$(GO) build $(GOFLAGS) ./...

check-tools:
	@bash scripts/check-tools

vet:
	$(GO) vet ./...

# unit: the race-detector test run over the whole module. Without /dev/kvm
# the KVM tests skip here and run in kvm-test instead (inside the kvmbox), so
# a "kvm" in FTVM_REQUIRE is enforced there, not here.
unit:
	@req="$${FTVM_REQUIRE:-}"; \
	if [ ! -c /dev/kvm ]; then \
		req=$$(printf ',%s,' "$$req" | sed 's/,kvm,/,/g; s/^,*//; s/,*$$//'); \
		echo "unit: no /dev/kvm here: KVM tests skip in this run and run in 'make kvm-test'"; \
	fi; \
	echo "FTVM_REQUIRE=$$req $(GO) test -race -timeout $(TEST_TIMEOUT) $(PKGS)"; \
	FTVM_REQUIRE="$$req" $(GO) test -race -timeout $(TEST_TIMEOUT) $(PKGS)

test: check-tools vet guests unit kvm-test

# guests: the freestanding C guest programs (vmm/guests); filled by the vmm work.
guests:
	@if [ -f vmm/guests/Makefile ]; then $(MAKE) -C vmm/guests; else echo "guests: none yet"; fi

# kvm-test: the vmm tests against real KVM. Without /dev/kvm here, they run
# in scripts/kvmbox/kvmbox (nested KVM in a QEMU TCG guest; root needed).
kvm-test:
	@bash scripts/kvmbox/kvm-test

bench:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -count $(BENCHCOUNT) -benchmem ./...

# demo: until the end-to-end work lands, the ring benchmark report (ring
# benchmarks and their baselines, measured in one run, with PASS/MISS).
demo:
	$(GO) run ./cmd/ftvm bench rings

clean:
	$(GO) clean ./...
	@if [ -f vmm/guests/Makefile ]; then $(MAKE) -C vmm/guests clean; fi
