package xdpfwd

// The object is committed (fwd_bpfel.*) so `go build` needs no clang; regenerate with
// BPF2GO_CFLAGS exported as the Makefile does:
//   BPF2GO_CFLAGS="-O2 -g -Wall -Werror -I/usr/include/$(uname -m)-linux-gnu" go generate ./tools/bench/xdpfwd/
//go:generate go tool bpf2go -tags linux -target bpfel fwd bpf/fwd.c -- -Ibpf
