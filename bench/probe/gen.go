package probe

// The programs are C (bpf/probe.c) compiled by clang through bpf2go; the
// generated probe_bpfel.go and probe_bpfel.o are committed, so building
// ftvm needs no clang. After editing bpf/probe.c, run `go generate
// ./bench/probe` (clang and libbpf-dev from Debian: apt-get install clang
// libbpf-dev) and commit both files.
//
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel probe bpf/probe.c -- -I/usr/include/x86_64-linux-gnu
