// Package agent is sluice-agent's program, as kube-proxy's cmd/kube-proxy/app is kube-proxy's:
// the options and their flags (options.go), their validation (validation.go) and the run
// sequence (server.go). cmd/sluice-agent only calls it.
package agent
