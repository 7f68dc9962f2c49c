// Package datapath owns the compiled BPF object: it loads it with the agent's settings, pins its
// maps, and attaches its programs to devices (XDP native or generic, tc through TCX or clsact).
package datapath

// The object is committed (sluice_bpfel.go, sluice_bpfel.o) so `go build` needs no clang;
// `make generate` rebuilds it and the tests fail if the committed copy is stale.
//go:generate go tool bpf2go -tags linux -target bpfel -type frontend_key -type frontend -type slot_key -type backend -type ct_key -type ct_entry -type svc_stats -type reason -type device_info -type trace_stage -type affinity_key -type affinity -type affinity_match -type source_range Sluice ../../bpf/sluice.c -- -I../../bpf
//go:generate go tool bpf2go -tags linux -target bpfel -type frontend_key -type frontend -type backend -type ct_key -type ct_entry -type affinity_key -type source_range -type frag_key Sluice6 ../../bpf/sluice6.c -- -I../../bpf
//go:generate go tool bpf2go -tags linux -target bpfel -type sock_revnat_key -type sock_revnat -type sock_affinity_key SluiceSock ../../bpf/sock.c -- -I../../bpf
//go:generate go tool bpf2go -tags linux -target bpfel -type sock_revnat_key -type sock_revnat SluiceSock6 ../../bpf/sock6.c -- -I../../bpf
