package pktgen

// The objects are committed (pktgen_bpfel.*, sink_bpfel.*) so `go build` needs no clang;
// regenerate with BPF2GO_CFLAGS exported as the Makefile does:
//   BPF2GO_CFLAGS="-O2 -g -Wall -Werror -I/usr/include/$(uname -m)-linux-gnu" go generate ./tools/pktgen/
//go:generate go tool bpf2go -tags linux -target bpfel -type state pktgen bpf/pktgen.c -- -Ibpf
//go:generate go tool bpf2go -tags linux -target bpfel -type stats sink bpf/sink.c -- -Ibpf
