/*
 * kvstore — a UDP key-value server, the guest ftvm protects in the demo.
 *
 * Boot: read the options, ask the NIC for its MAC, rebuild the table from
 * the write-ahead log, print one boot line. Then serve: wait for a frame
 * with NIC WAIT (so an idle guest costs one exit per KV_WAIT_NS instead of a
 * busy loop), read frames until none is pending, answer each. Every write is
 * in the log before its answer leaves, which is what lets a secondary that
 * replays the log, or a restarted kvstore, agree with every answer a client
 * has seen.
 */
#include "kv.h"
#include "net.h"
#include "wal.h"

#define PROG "kvstore"
#define KV_WAIT_NS       100000000u /* 100 ms */
#define KV_PORT_DEFAULT  7000u
#define KV_IP_DEFAULT    "10.77.0.2"
#define RX_BUFFER_BYTES  2048

static uint8_t rx_frame[RX_BUFFER_BYTES] __attribute__((aligned(8)));

/* parse_ip reads a dotted quad; it returns -1 unless all n bytes are one. */
static int parse_ip(const char *s, size_t n, uint8_t ip[4])
{
	size_t start = 0;

	for (int part = 0; part < 4; part++) {
		size_t end = start;
		uint64_t v;
		while (end < n && s[end] != '.')
			end++;
		if ((part < 3) != (end < n) || end - start > 3 || rt_parse_u64(s + start, end - start, &v) != 0 || v > 255)
			return -1;
		ip[part] = (uint8_t)v;
		start = end + 1;
	}
	return 0;
}

static void print_stats(void)
{
	const struct net_stats *s = &net_stats;

	rt_printf(PROG ": halt requests=%lu frames=%lu arp_replies=%lu arp_ignored=%lu ignored_type=%lu "
	          "drop_eth=%lu drop_ip_hdr=%lu drop_ip_csum=%lu drop_ip_frag=%lu drop_ip_dst=%lu "
	          "drop_ip_proto=%lu drop_udp_hdr=%lu drop_udp_csum=%lu drop_udp_port=%lu tx_errors=%lu "
	          "keys=%u wal_records=%lu wal_compactions=%lu\n",
	          s->requests, s->frames, s->arp_replies, s->arp_ignored, s->ignored_type, s->drop_eth,
	          s->drop_ip_hdr, s->drop_ip_csum, s->drop_ip_frag, s->drop_ip_dst, s->drop_ip_proto,
	          s->drop_udp_hdr, s->drop_udp_csum, s->drop_udp_port, s->tx_errors, kv_count(), wal_records(),
	          wal_compactions());
}

int guest_main(const struct ftvm_boot *boot)
{
	static const char *const known[] = { "ip", "port", "maxreq", "keys", 0 };
	uint64_t port, maxreq, keys;
	const char *ip;
	int iplen;

	(void)boot;
	if (rt_cmdline_check(PROG, known) != 0 ||
	    rt_cmdline_u64(PROG, "port", KV_PORT_DEFAULT, 1, 65535, &port) != 0 ||
	    rt_cmdline_u64(PROG, "maxreq", 0, 0, UINT64_MAX, &maxreq) != 0 ||
	    rt_cmdline_u64(PROG, "keys", KV_KEYS_MAX, 1, KV_KEYS_MAX, &keys) != 0)
		return RT_EXIT_USAGE;
	if ((iplen = rt_cmdline_get("ip", &ip)) < 0) {
		ip = KV_IP_DEFAULT;
		iplen = (int)strlen(KV_IP_DEFAULT);
	}
	if (parse_ip(ip, (size_t)iplen, net_cfg.ip) != 0) {
		rt_printf(PROG ": ip=%.*s is not an IPv4 address; give ip=a.b.c.d\n", iplen, ip);
		return RT_EXIT_USAGE;
	}
	net_cfg.port = (uint16_t)port;
	kv_init((uint32_t)keys);
	rt_nic_mac(net_cfg.mac);

	if (wal_open() != WAL_OK)
		return RT_EXIT_FAILED;

	const uint8_t *m = net_cfg.mac, *a = net_cfg.ip;
	rt_printf(PROG ": ip=%u.%u.%u.%u port=%u mac=%02x:%02x:%02x:%02x:%02x:%02x wal_replayed=%lu keys=%u "
	          "maxreq=%lu\n",
	          a[0], a[1], a[2], a[3], net_cfg.port, m[0], m[1], m[2], m[3], m[4], m[5], wal_replayed(),
	          kv_count(), maxreq);

	for (;;) {
		if (!rt_nic_wait(KV_WAIT_NS))
			continue;
		size_t n;
		while ((n = rt_nic_rx(rx_frame, sizeof(rx_frame))) > 0) {
			eth_input(rx_frame, n);
			if (maxreq && net_stats.requests >= maxreq) {
				print_stats();
				return RT_EXIT_OK;
			}
		}
	}
}
