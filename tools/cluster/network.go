package cluster

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// sysctlsIn sets sysctls in a network namespace (they are per namespace: forwarding, rp_filter).
func sysctlsIn(ns string, kv ...string) error {
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		if err := run("ip", "netns", "exec", ns, "sysctl", "-qw", k+"="+v); err != nil {
			return err
		}
	}
	return nil
}

// upNetwork makes the namespaces: sluice-gw with br0 (the nodes' default gateway and the
// control plane's address), the client, and the nodes, each on br0 by a veth named eth0 on its
// side. The veths stay as the kernel makes them (tx checksumming on, no XDP on the bridge's
// ports): a kind node's NIC is such a veth, and the defaults must work there.
func upNetwork(dual bool) error {
	ip := func(args ...string) error { return run("ip", args...) }
	nss := []string{gwNS, clientNS}
	for _, n := range Nodes {
		nss = append(nss, n.Name)
	}
	for _, ns := range nss {
		if err := ip("netns", "add", ns); err != nil {
			return err
		}
		if err := ip("-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	if err := ip("-n", gwNS, "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	if err := ip("-n", gwNS, "addr", "add", gwIP.String()+"/24", "dev", "br0"); err != nil {
		return err
	}
	if err := ip("-n", gwNS, "link", "set", "br0", "up"); err != nil {
		return err
	}
	type host struct{ ns, addr, addr6, port string }
	hosts := []host{{clientNS, clientIP.String(), clientIP6.String(), "client"}}
	for i, n := range Nodes {
		hosts = append(hosts, host{n.Name, n.IP.String(), n.IP6.String(), fmt.Sprintf("node%d", i+1)})
		// A node forwards (pods, NodePorts) with no reverse-path filter, as every Kubernetes
		// node; set before eth0 moves in so that it inherits them.
		if err := sysctlsIn(n.Name, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
			"net.ipv4.conf.default.rp_filter=0"); err != nil {
			return err
		}
		if dual {
			if err := sysctlsIn(n.Name, "net.ipv6.conf.all.forwarding=1"); err != nil {
				return err
			}
		}
	}
	// The gateway routes between the pods' subnets and the client as the nodes' router does.
	if err := sysctlsIn(gwNS, "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	if dual {
		if err := sysctlsIn(gwNS, "net.ipv6.conf.all.forwarding=1"); err != nil {
			return err
		}
		if err := ip("-n", gwNS, "addr", "add", gwIP6.String()+"/64", "dev", "br0", "nodad"); err != nil {
			return err
		}
	}
	for _, h := range hosts {
		tmp := "slc" + h.port
		if err := ip("link", "add", tmp, "type", "veth", "peer", "name", tmp+"p"); err != nil {
			return err
		}
		steps := [][]string{
			{"link", "set", tmp, "netns", h.ns},
			{"-n", h.ns, "link", "set", tmp, "name", "eth0"},
			{"link", "set", tmp + "p", "netns", gwNS},
			{"-n", gwNS, "link", "set", tmp + "p", "name", h.port},
			{"-n", gwNS, "link", "set", h.port, "master", "br0", "up"},
			{"-n", h.ns, "addr", "add", h.addr + "/24", "dev", "eth0"},
			{"-n", h.ns, "link", "set", "eth0", "up"},
			{"-n", h.ns, "route", "add", "default", "via", gwIP.String()},
		}
		if dual {
			// nodad: a tentative address cannot be used for a second or two, and none repeats.
			steps = append(steps, []string{"-n", h.ns, "addr", "add", h.addr6 + "/64", "dev", "eth0", "nodad"},
				[]string{"-n", h.ns, "-6", "route", "add", "default", "via", gwIP6.String()})
		}
		for _, s := range steps {
			if err := ip(s...); err != nil {
				return err
			}
		}
	}
	return nil
}

// routePodCIDR tells every namespace but the node itself that cidr is behind node: the pod
// routes a CNI such as kindnet installs, and the gateway's and client's routes to them.
func routePodCIDR(node Node, cidr string) error {
	nss := []string{gwNS, clientNS}
	for _, n := range Nodes {
		if n.Name != node.Name {
			nss = append(nss, n.Name)
		}
	}
	via := node.IP
	if p, err := netip.ParsePrefix(cidr); err == nil && p.Addr().Is6() {
		via = node.IP6
	}
	for _, ns := range nss {
		if err := run("ip", "-n", ns, "route", "replace", cidr, "via", via.String()); err != nil {
			return err
		}
	}
	return nil
}

// downNetwork deletes the namespaces (their links go with them).
func downNetwork() error {
	var errs []string
	nss := []string{gwNS, clientNS}
	for _, n := range Nodes {
		nss = append(nss, n.Name)
	}
	for _, ns := range nss {
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			continue
		}
		if err := run("ip", "netns", "del", ns); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("delete namespaces: %s", strings.Join(errs, "; "))
	}
	return nil
}

// masqueradePods masquerades what the node's pods send outside the pod network (to nodes, to
// the client), as kindnet does: kube-proxy and sluice then see another node's pods arrive
// from that node's address, as on kind, and pod-to-pod traffic keeps its addresses.
func masqueradePods(n Node, dual bool) error {
	cmds := [][2]string{{"iptables", podCIDR}}
	if dual {
		cmds = append(cmds, [2]string{"ip6tables", podCIDR6})
	}
	for _, c := range cmds {
		if err := run("nsenter", "--net=/run/netns/"+n.Name, "--", c[0], "-w", "-t", "nat", "-A", "POSTROUTING",
			"-s", c[1], "!", "-d", c[1], "-m", "comment", "--comment", "sluice-cluster: pods to outside the pod network",
			"-j", "MASQUERADE"); err != nil {
			return err
		}
	}
	return nil
}
