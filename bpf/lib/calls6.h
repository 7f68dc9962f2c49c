/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* calls6.h: the IPv6 programs' tail calls. IPv6's tuples are 24 bytes longer than IPv4's, and
 * some of the path does not fit one program's 512 bytes of stack with the rest: it runs in a
 * program of its own, reached by tail call, which starts with an empty stack (what it needs
 * waits in the per-CPU scratch). The agent fills the arrays with sluice6.c's programs (one
 * array per program type: a tail call stays within its type). Pinned: the kernel empties a
 * program array when no file descriptor or pin holds it, and the programs must keep running
 * when the agent stops. */
#ifndef SLUICE_CALLS6_H
#define SLUICE_CALLS6_H

#include "common.h"

#define CALL_NEW_FLOW 0 /* a new flow (nodeport.h), XDP and tc */
#define CALL_TOO_BIG 1  /* packet too big for the next hop (mtu6.h), tc only */
#define CALL_ICMP 2     /* an ICMPv6 error about a flow (icmp6.h), tc only */
#define CALL_HOSTNAT 3  /* a kernel NAT flow to track (hostnat.h), tc egress only */
#define CALL_NEW_FLOW_POD 4 /* a new flow a pod opens, at its device (tc only) */
#define CALL_MAX 5

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, CALL_MAX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_calls_xdp6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, CALL_MAX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_calls_tc6 SEC(".maps");

#endif
