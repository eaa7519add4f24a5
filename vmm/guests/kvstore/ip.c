/*
 * ip.c — IPv4 and UDP.
 *
 * Input is validated in the order a router would: header shape and lengths,
 * header checksum, then fragments (dropped: a request is one datagram and a
 * reassembly buffer would be a resource a peer could exhaust), destination
 * and protocol. UDP checks the length, the port and, when the sender set
 * one, the checksum over the pseudo-header. Each datagram to our port is one
 * request and gets exactly one answer, sent back to the MAC, IP and port it
 * came from.
 */
#include "kv.h"
#include "net.h"

#define IP_FLAG_DF       0x4000
#define IP_FLAG_MF       0x2000
#define IP_FRAG_OFF_MASK 0x1fff

/* IP identification of our datagrams: a counter, so replay reproduces it. */
static uint16_t ip_ident;

static uint16_t udp_checksum(const uint8_t src[4], const uint8_t dst[4], const uint8_t *udp, size_t len)
{
	uint8_t pseudo[12];

	memcpy(pseudo, src, 4);
	memcpy(pseudo + 4, dst, 4);
	pseudo[8] = 0;
	pseudo[9] = IP_PROTO_UDP;
	put16(pseudo + 10, (uint16_t)len);
	return csum_fold(csum_add(csum_add(0, pseudo, sizeof(pseudo)), udp, len));
}

static void udp_output(const uint8_t dst_mac[6], const uint8_t dst_ip[4], uint16_t dst_port, size_t payload_len)
{
	uint8_t *ip = eth_payload();
	uint8_t *udp = ip + IP_HDR_MIN_BYTES;
	size_t udp_len = UDP_HDR_BYTES + payload_len;

	ip[0] = 0x45; /* version 4, 5 words of header */
	ip[1] = 0;
	put16(ip + 2, (uint16_t)(IP_HDR_MIN_BYTES + udp_len));
	put16(ip + 4, ip_ident++);
	put16(ip + 6, IP_FLAG_DF);
	ip[8] = IP_TTL_DEFAULT;
	ip[9] = IP_PROTO_UDP;
	put16(ip + 10, 0);
	memcpy(ip + 12, net_cfg.ip, 4);
	memcpy(ip + 16, dst_ip, 4);
	put16(ip + 10, csum_fold(csum_add(0, ip, IP_HDR_MIN_BYTES)));

	put16(udp, net_cfg.port);
	put16(udp + 2, dst_port);
	put16(udp + 4, (uint16_t)udp_len);
	put16(udp + 6, 0);
	uint16_t c = udp_checksum(net_cfg.ip, dst_ip, udp, udp_len);
	/* 0 means "no checksum" in UDP, so a computed 0 is sent as its
	 * one's complement twin. */
	put16(udp + 6, c ? c : 0xffff);

	eth_output(dst_mac, ETH_TYPE_IPV4, IP_HDR_MIN_BYTES + udp_len);
}

static void udp_input(const uint8_t src_mac[6], const uint8_t *ip, const uint8_t *udp, size_t len)
{
	if (len < UDP_HDR_BYTES || get16(udp + 4) < UDP_HDR_BYTES || get16(udp + 4) > len) {
		net_stats.drop_udp_hdr++;
		return;
	}
	len = get16(udp + 4);
	if (get16(udp + 2) != net_cfg.port) {
		net_stats.drop_udp_port++;
		return;
	}
	if (get16(udp + 6) != 0 && udp_checksum(ip + 12, ip + 16, udp, len) != 0) {
		net_stats.drop_udp_csum++;
		return;
	}
	/* The answer is written straight into the TX frame, behind the room
	 * left for its headers; the request stays in the RX buffer. */
	uint8_t *reply = eth_payload() + IP_HDR_MIN_BYTES + UDP_HDR_BYTES;
	size_t n = kv_request((const char *)udp + UDP_HDR_BYTES, len - UDP_HDR_BYTES, (char *)reply,
	                      KV_REPLY_BYTES_MAX);
	if (n >= KV_REPLY_BYTES_MAX)
		n = KV_REPLY_BYTES_MAX - 1; /* cut, as snprintf did */
	udp_output(src_mac, ip + 12, get16(udp), n);
	net_stats.requests++;
}

void ip_input(const uint8_t src_mac[6], const uint8_t *ip, size_t len)
{
	if (len < IP_HDR_MIN_BYTES || ip[0] >> 4 != 4) {
		net_stats.drop_ip_hdr++;
		return;
	}
	size_t hdr = (size_t)(ip[0] & 0x0f) * 4, total = get16(ip + 2);
	if (hdr < IP_HDR_MIN_BYTES || hdr > len || total < hdr || total > len) {
		net_stats.drop_ip_hdr++;
		return;
	}
	/* A frame may carry padding after the datagram; the IP length rules. */
	len = total;
	if (csum_fold(csum_add(0, ip, hdr)) != 0) {
		net_stats.drop_ip_csum++;
		return;
	}
	uint16_t frag = get16(ip + 6);
	if ((frag & IP_FLAG_MF) || (frag & IP_FRAG_OFF_MASK)) {
		net_stats.drop_ip_frag++;
		return;
	}
	if (memcmp(ip + 16, net_cfg.ip, 4) != 0) {
		net_stats.drop_ip_dst++;
		return;
	}
	if (ip[9] != IP_PROTO_UDP) {
		net_stats.drop_ip_proto++;
		return;
	}
	udp_input(src_mac, ip, ip + hdr, len - hdr);
}
