// Package testutil holds the helpers that tests use to skip where a feature
// of the machine is truly absent, and only there.
//
// Every helper probes the real feature (it opens /dev/kvm and asks for the
// API version, it loads a map into the kernel, it unshares a network
// namespace) rather than guessing from the environment, and a skip names the
// feature and what was found. A skip that hides a regression is a bug, so the
// environment variable FTVM_REQUIRE turns skips into failures:
//
//	FTVM_REQUIRE=root,bpf,netns go test ./...
//
// makes any test that would skip for want of root, BPF or network namespaces
// fail instead. CI sets it to what its machines have, so that a green run
// proves the real paths ran. FTVM_REQUIRE=all requires every feature.
package testutil
