/*
 * net.h — what the network layers of kvstore share: the configuration, the
 * drop counters, byte-order helpers and the Internet checksum.
 *
 * Headers are read and written at byte offsets rather than through packed
 * structs, so nothing depends on alignment or on the compiler's layout.
 */
#ifndef KV_NET_H
#define KV_NET_H

#include "rt.h"

#define ETH_HDR_BYTES       14
#define ETH_FRAME_MIN_BYTES 60 /* without FCS: shorter frames are padded */
#define ETH_TYPE_IPV4       0x0800
#define ETH_TYPE_ARP        0x0806
#define ARP_PKT_BYTES       28 /* Ethernet/IPv4 ARP */
#define IP_HDR_MIN_BYTES    20
#define IP_PROTO_UDP        17
#define IP_TTL_DEFAULT      64
#define UDP_HDR_BYTES       8
/* Largest UDP payload that fits one frame with a 20-byte IP header. */
#define UDP_PAYLOAD_MAX_BYTES (FTVM_NIC_MTU_FRAME - ETH_HDR_BYTES - IP_HDR_MIN_BYTES - UDP_HDR_BYTES)

struct net_cfg {
	uint8_t mac[6];
	uint8_t ip[4];
	uint16_t port;
};

/* Counters, printed when the guest halts; tests read them to see that a
 * frame was dropped for the reason they planted. */
struct net_stats {
	uint64_t frames;       /* frames received */
	uint64_t drop_eth;     /* runt, or addressed to another MAC */
	uint64_t ignored_type; /* not IPv4 or ARP */
	uint64_t arp_replies;  /* ARP requests for our IP answered */
	uint64_t arp_ignored;  /* other ARP: replies, other targets, bad format */
	uint64_t drop_ip_hdr;  /* malformed IPv4 header or lengths */
	uint64_t drop_ip_csum; /* IPv4 header checksum wrong */
	uint64_t drop_ip_frag; /* a fragment (MF set or offset != 0) */
	uint64_t drop_ip_dst;  /* not addressed to our IP */
	uint64_t drop_ip_proto;/* not UDP */
	uint64_t drop_udp_hdr; /* malformed UDP length */
	uint64_t drop_udp_csum;/* UDP checksum non-zero and wrong */
	uint64_t drop_udp_port;/* not our port */
	uint64_t requests;     /* datagrams answered (including ERR answers) */
	uint64_t tx_errors;    /* NIC TX reported an error */
};

extern struct net_cfg net_cfg;
extern struct net_stats net_stats;

static inline uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/* csum_add adds n bytes, as big-endian 16-bit words, to a running sum. */
uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t n);
/* csum_fold folds a running sum to the 16-bit one's complement checksum. */
uint16_t csum_fold(uint32_t sum);

/* eth.c */
void eth_input(const uint8_t *frame, size_t len);
/* eth_payload is where the next frame's payload is built. */
uint8_t *eth_payload(void);
void eth_output(const uint8_t dst[6], uint16_t type, size_t payload_len);

/* ip.c */
void ip_input(const uint8_t src_mac[6], const uint8_t *pkt, size_t len);

#endif
