// Command sluicectl inspects the sluice datapath on this node. It only wires internal/cli.
package main

import (
	"os"

	"github.com/sluicelb/sluice/internal/cli"
)

func main() { os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr)) }
