/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* common.h: includes, attributes and the settings the agent writes before load. */
#ifndef SLUICE_COMMON_H
#define SLUICE_COMMON_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
/* A global function: the verifier checks it once, on its own, not on every path calling it. */
#ifndef __noinline
#define __noinline __attribute__((noinline))
#endif

/* linux/icmp.h drags in libc's socket headers; ICMP needs only this. */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
	} un;
};
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
#define ICMP_FRAG_NEEDED 4  /* a code of ICMP_DEST_UNREACH */
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define NSEC_PER_SEC 1000000000ULL

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Settings, written from Go (spec.Variables) before the object is loaded. Defaults here are the
 * agent's defaults, so the golden-packet tests run with what users get. */
/* SNAT source ports: below the NodePort range and Linux's ephemeral ports (32768-60999), so
 * no SNAT flow takes the tuple of one of the node's own connections, and wide (28976 ports per
 * backend and node address) because a closed flow's port waits out TIME_WAIT before reuse. */
volatile const __u16 cfg_snat_port_min = 1024;
volatile const __u16 cfg_snat_port_max = 29999;
volatile const __u32 cfg_ct_tcp_timeout_s = 21600;  /* established TCP: 6 h, as Cilium */
volatile const __u32 cfg_ct_close_timeout_s = 10;   /* after RST, or FIN both ways */
volatile const __u32 cfg_ct_syn_timeout_s = 60;     /* a TCP flow not answered yet */
/* A closed flow's SNAT port is not handed out again for this long: the backend may still hold
 * the old connection in TIME_WAIT (60 s on Linux) and would not accept a new SYN on it. */
volatile const __u32 cfg_snat_reuse_s = 60;
volatile const __u32 cfg_ct_udp_timeout_s = 60;
volatile const __u32 cfg_max_services = 65536;      /* size of the per-service stats array */
volatile const __u32 cfg_maglev_size = 16381;       /* entries per Maglev table: a prime */
/* Trace mode: the program decides as usual but writes no conntrack entry, so a trace run
 * against the live maps leaves nothing behind (sluicectl trace). */
volatile const __u8 cfg_trace = 0;
/* The ingress device XDP assumes when nonzero: BPF_PROG_TEST_RUN takes an xdp_md (and with it
 * ingress_ifindex) only from Linux 5.14, so test and trace runs on older kernels load a copy
 * with the device fixed here. 0 (the agent's programs): the packet's own. */
volatile const __u32 cfg_xdp_ifindex = 0;

#endif
