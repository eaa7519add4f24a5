#!/bin/sh
# netcheck.sh: proves that a kvmbox guest can build the network the ftvm
# end-to-end test needs. Run it inside the box (see run-netcheck next to it):
# two network namespaces ("hosts") joined by veth pairs through a bridge in
# the box's root namespace, a TAP device in one of them (where a VM would be
# attached), a ping across, then an nftables rule that cuts the link between
# the hosts (the ping must fail) and its removal (the ping must work again),
# once on the bridge (silent, like a cable pulled) and once inside a host.
#
# Exit status 0 when every step held; otherwise 1, after a line saying which
# step failed and what it saw.
set -u
# By path: busybox sh would run its own ip applet for a bare "ip".
ip() { /bin/ip "$@"; }
nft() { /bin/nft "$@"; }

step() { echo "netcheck: $*"; }
fail() { echo "netcheck: FAIL: $*"; exit 1; }
run() { "$@" || fail "'$*' exited with status $?"; }
# pings NS ADDR: 2 echo requests from namespace NS to ADDR, 1 s wait each.
pings() { ip netns exec "$1" ping -c 2 -W 1 "$2" >/tmp/ping.out 2>&1; }

step "tools: $(ip -V 2>&1), $(nft -v 2>&1)"
[ -c /dev/net/tun ] || fail "/dev/net/tun is missing (is the tun module loaded? kvmbox --modules tun)"

run ip link add br0 type bridge
run ip link set br0 up
for h in a b; do
	run ip netns add "host-$h"
	run ip link add "eth-$h" type veth peer name "br-$h"
	run ip link set "eth-$h" netns "host-$h"
	run ip link set "br-$h" master br0
	run ip link set "br-$h" up
	run ip -n "host-$h" link set lo up
	run ip -n "host-$h" link set "eth-$h" up
done
run ip -n host-a addr add 10.77.0.1/24 dev eth-a
run ip -n host-b addr add 10.77.0.2/24 dev eth-b

# A VM's network device is a TAP on its host; ftvm opens /dev/net/tun itself.
run ip -n host-a tuntap add dev tap0 mode tap
run ip -n host-a link set tap0 up
ip -n host-a -d link show tap0 | grep -q 'tun type tap' ||
	fail "tap0 in host-a is not a TAP device: $(ip -n host-a -d link show tap0 2>&1)"
step "bridge br0, veth host-a/eth-a and host-b/eth-b, TAP host-a/tap0 created"

pings host-a 10.77.0.2 || fail "ping host-a -> host-b over the bridge failed: $(cat /tmp/ping.out)"
step "ping host-a -> host-b: $(grep -E 'packets transmitted' /tmp/ping.out)"

# Cut the link the way a broken cable does: the bridge stops forwarding
# between the two hosts' ports, silently, in both directions, and neither
# host's own stack is touched.
run nft add table bridge cut
run nft add chain bridge cut links '{ type filter hook forward priority 0; policy accept; }'
run nft add rule bridge cut links iifname br-a oifname br-b drop
run nft add rule bridge cut links iifname br-b oifname br-a drop
if pings host-a 10.77.0.2; then
	fail "ping host-a -> host-b still worked with the bridge cut in place: $(cat /tmp/ping.out)"
fi
step "link cut on the bridge (nft bridge family, forward br-a <-> br-b drop): ping fails: $(tail -n 1 /tmp/ping.out)"
run nft delete table bridge cut
pings host-a 10.77.0.2 || fail "ping host-a -> host-b failed after the bridge cut was removed: $(cat /tmp/ping.out)"
step "link healed: $(grep -E 'packets transmitted' /tmp/ping.out)"

# Cut from inside one host: host-a drops everything it would send on eth-a
# (the sender then sees EPERM rather than silence).
run ip netns exec host-a nft add table inet cut
run ip netns exec host-a nft add chain inet cut egress '{ type filter hook output priority 0; policy accept; }'
run ip netns exec host-a nft add rule inet cut egress oifname eth-a drop
if pings host-a 10.77.0.2; then
	fail "ping host-a -> host-b still worked with the nft drop rule in place: $(cat /tmp/ping.out)"
fi
step "link cut in host-a (nft inet output oifname eth-a drop): ping fails: $(tail -n 1 /tmp/ping.out)"

run ip netns exec host-a nft delete table inet cut
pings host-a 10.77.0.2 || fail "ping host-a -> host-b failed after the nft table was deleted: $(cat /tmp/ping.out)"
step "link healed: $(grep -E 'packets transmitted' /tmp/ping.out)"
step "PASS"
