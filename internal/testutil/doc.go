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
//
// A test that lacks something other than a feature (a guest not built, a
// tool not installed) skips with SkipMissing, naming the features it
// belongs to: FTVM_REQUIRE=kvm then fails a KVM test whose guest is
// missing. SkipShort and SkipChosen are for skips the one running the
// tests chose (-short, a -bench pattern). No test calls Skip itself
// (TestNoSkipOutsideTestutil reads every test file to hold that).
package testutil
