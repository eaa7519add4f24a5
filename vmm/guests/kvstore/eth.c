/*
 * eth.c — Ethernet framing and ARP.
 *
 * kvstore keeps no ARP cache: it only ever answers, so the destination MAC of
 * every frame it sends is the source MAC of the frame it answers. ARP is
 * therefore only the responder half: requests for our IP get a reply, all
 * other ARP traffic is counted and ignored.
 */
#include "net.h"

#define ARP_HTYPE_ETHERNET 1
#define ARP_OP_REQUEST     1
#define ARP_OP_REPLY       2

struct net_cfg net_cfg;
struct net_stats net_stats;

static const uint8_t mac_broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

/* One frame is built at a time: answers are sent before the next frame is
 * read. */
static uint8_t tx_frame[FTVM_NIC_MTU_FRAME];

uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t n)
{
	while (n >= 2) {
		sum += get16(p);
		p += 2;
		n -= 2;
	}
	if (n)
		sum += (uint32_t)p[0] << 8;
	return sum;
}

uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

uint8_t *eth_payload(void)
{
	return tx_frame + ETH_HDR_BYTES;
}

void eth_output(const uint8_t dst[6], uint16_t type, size_t payload_len)
{
	size_t len = ETH_HDR_BYTES + payload_len;

	memcpy(tx_frame, dst, 6);
	memcpy(tx_frame + 6, net_cfg.mac, 6);
	put16(tx_frame + 12, type);
	if (len < ETH_FRAME_MIN_BYTES) {
		memset(tx_frame + len, 0, ETH_FRAME_MIN_BYTES - len);
		len = ETH_FRAME_MIN_BYTES;
	}
	if (rt_nic_tx(tx_frame, len) != FTVM_OK)
		net_stats.tx_errors++;
}

static void arp_input(const uint8_t *eth_src, const uint8_t *a, size_t len)
{
	if (len < ARP_PKT_BYTES || get16(a) != ARP_HTYPE_ETHERNET || get16(a + 2) != ETH_TYPE_IPV4 ||
	    a[4] != 6 || a[5] != 4 || get16(a + 6) != ARP_OP_REQUEST || memcmp(a + 24, net_cfg.ip, 4) != 0) {
		net_stats.arp_ignored++;
		return;
	}
	uint8_t *r = eth_payload();
	put16(r, ARP_HTYPE_ETHERNET);
	put16(r + 2, ETH_TYPE_IPV4);
	r[4] = 6;
	r[5] = 4;
	put16(r + 6, ARP_OP_REPLY);
	memcpy(r + 8, net_cfg.mac, 6);  /* sender: us */
	memcpy(r + 14, net_cfg.ip, 4);
	memcpy(r + 18, a + 8, 6);       /* target: whoever asked */
	memcpy(r + 24, a + 14, 4);
	eth_output(eth_src, ETH_TYPE_ARP, ARP_PKT_BYTES);
	net_stats.arp_replies++;
}

void eth_input(const uint8_t *frame, size_t len)
{
	net_stats.frames++;
	if (len < ETH_HDR_BYTES ||
	    (memcmp(frame, net_cfg.mac, 6) != 0 && memcmp(frame, mac_broadcast, 6) != 0)) {
		net_stats.drop_eth++;
		return;
	}
	const uint8_t *src = frame + 6;
	switch (get16(frame + 12)) {
	case ETH_TYPE_ARP:
		arp_input(src, frame + ETH_HDR_BYTES, len - ETH_HDR_BYTES);
		break;
	case ETH_TYPE_IPV4:
		ip_input(src, frame + ETH_HDR_BYTES, len - ETH_HDR_BYTES);
		break;
	default:
		net_stats.ignored_type++;
		break;
	}
}
