// Command controlplane builds and runs a real kube-apiserver with etcd on loopback until
// interrupted, then stops both (the API server first): for trying sluice by hand.
//
//	go run ./tools/controlplane/cmd/controlplane   # prints the kubeconfig path
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sluicelb/sluice/tools/controlplane"
)

func main() {
	cp, err := controlplane.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(1)
	}
	fmt.Printf("kube-apiserver on https://127.0.0.1:%d\nkubeconfig: %s\nlogs: %s\nCtrl-C stops it.\n", cp.Port, cp.Kubeconfig, cp.Dir)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	cp.Stop()
}
