# ftvm — build, test, benchmark and demo targets.
#
#   make demo    the main job (see README.md for what it shows; root and KVM)
#   make test    everything CI runs: tool check, vet, guests, race tests,
#                the KVM tests, the RDMA verbs tests and the end-to-end tests
#
# Every target works on a fresh machine: missing tools are named by
# scripts/check-tools with the command that installs them.

GO        ?= go
GOFLAGS   ?=
# PKGS is what `make unit` tests: everything but the end-to-end tests and
# the end-to-end run of `ftvm bench ft`, which run on their own in `make
# e2e` (they time failovers and run daemon pairs, so they should not share
# the CPUs with the rest).
PKGS      ?= $(shell $(GO) list ./... | grep -v -e '/bench/e2e$$' -e '/bench/ft$$')
TEST_TIMEOUT ?= 30m
BENCH     ?= .
BENCHTIME ?= 1s
BENCHCOUNT ?= 1

.PHONY: all build test vet unit guests bench demo check-tools fuzz clean kvm-test e2e rdma-test

all: build

build:
	$(GO) build $(GOFLAGS) ./...

check-tools:
	@bash scripts/check-tools

# vet also vets the verbs code (cgo, -tags ftvm_rdma) where libibverbs-dev
# is installed; a default build leaves it out.
vet:
	$(GO) vet ./...
	@if [ -f /usr/include/infiniband/verbs.h ]; then \
		echo "$(GO) vet -tags ftvm_rdma ./rdma/..."; $(GO) vet -tags ftvm_rdma ./rdma/...; \
	else echo "vet: no libibverbs-dev here: the verbs code (-tags ftvm_rdma) is not vetted"; fi

# unit: the race-detector test run over the whole module. Without /dev/kvm
# the KVM tests skip here and run in kvm-test instead (inside the kvmbox), so
# a "kvm" in FTVM_REQUIRE is enforced there, not here. The verbs tests need
# -tags ftvm_rdma and a device: they run in rdma-test, which enforces "rdma".
unit:
	@req=$$(printf ',%s,' "$${FTVM_REQUIRE:-}" | sed 's/,rdma,/,/g; s/^,*//; s/,*$$//'); \
	if [ ! -c /dev/kvm ]; then \
		req=$$(printf ',%s,' "$$req" | sed 's/,kvm,/,/g; s/^,*//; s/,*$$//'); \
		echo "unit: no /dev/kvm here: KVM tests skip in this run and run in 'make kvm-test'"; \
	fi; \
	echo "FTVM_REQUIRE=$$req $(GO) test -race -timeout $(TEST_TIMEOUT) $(PKGS)"; \
	FTVM_REQUIRE="$$req" $(GO) test -race -timeout $(TEST_TIMEOUT) $(PKGS)

test: check-tools vet guests unit kvm-test-box rdma-test e2e

# guests: the freestanding C guest programs (vmm/guests); filled by the vmm work.
guests:
	@if [ -f vmm/guests/Makefile ]; then $(MAKE) -C vmm/guests; else echo "guests: none yet"; fi

# kvm-test: the vmm tests against real KVM. Without /dev/kvm here, they run
# in scripts/kvmbox/kvmbox (nested KVM in a QEMU TCG guest; root needed).
kvm-test:
	@bash scripts/kvmbox/kvm-test

# kvm-test-box: in make test, the unit run has already run the KVM tests
# (with -race) where /dev/kvm is here; only without it do they need the box.
kvm-test-box:
	@if [ -c /dev/kvm ]; then echo "kvm-test: /dev/kvm is here: the KVM tests ran in the unit run"; else bash scripts/kvmbox/kvm-test; fi

# rdma-test: rdma/verbs' tests and RTT benchmarks (against perftest's
# ib_write_lat) over real verbs: soft-RoCE (rdma_rxe) in scripts/kvmbox,
# since these hosts' kernel has no RDMA. Root, libibverbs-dev,
# ibverbs-providers, perftest; about a minute. FTVM_REQUIRE=rdma makes a
# skip a failure.
rdma-test:
	@bash scripts/kvmbox/rdma-test

# e2e: ftvm primary and secondary as processes in network namespaces, under
# client load, with the primary killed 20 times, the secondary killed, the
# link cut and a diverging guest (bench/e2e), then `ftvm bench ft` end to
# end with tiny cells (bench/ft, about 15 s). Root, KVM, TUN, netns, ip and
# nft; FTVM_E2E_KILLS sets the kills.
e2e: guests
	@bash scripts/e2e

bench:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -count $(BENCHCOUNT) -benchmem ./...

# demo: two hosts and a client in network namespaces, a protected kvstore
# VM under client load, the primary killed, and the failover table
# (ftvm demo; root and KVM). The ring benchmark report is `ftvm bench rings`.
demo: guests
	$(GO) run ./cmd/ftvm demo

clean:
	$(GO) clean ./...
	@if [ -f vmm/guests/Makefile ]; then $(MAKE) -C vmm/guests clean; fi
