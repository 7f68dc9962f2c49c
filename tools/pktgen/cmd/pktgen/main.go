// Command pktgen drives tools/pktgen by hand: it sends generated TCP SYN or UDP frames out of
// a device with XDP (Linux 5.18+), or, as `pktgen sink`, counts and drops what arrives at
// one. It prints its result as JSON. Needs root.
//
//	pktgen [--netns NS] --dev IF --dst-mac MAC --src ADDR[-ADDR] [--src-ports MIN-MAX]
//	       --dst ADDR:PORT [--proto udp|tcp] [--flows N] [--size BYTES] [--workers N]
//	       [--ingress IF] (--count N | --duration D)
//	pktgen sink [--netns NS] --dev IF [--match ADDR:PORT] [--proto udp|tcp] [--duration D]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/sluicelb/sluice/tools/pktgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var out any
	var err error
	if len(os.Args) > 1 && os.Args[1] == "sink" {
		out, err = sink(ctx, os.Args[2:])
	} else {
		out, err = send(ctx, os.Args[1:])
	}
	// A run stopped by a signal still reports what it did.
	if err == nil || errors.Is(err, context.Canceled) {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "pktgen:", err)
		os.Exit(1)
	}
}

func send(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("pktgen", flag.ExitOnError)
	nsName := fs.String("netns", "", "network namespace: a name under /var/run/netns or a path (default: this one)")
	dev := fs.String("dev", "", "device the frames leave by")
	ingress := fs.String("ingress", "", "device the frames enter by, then redirected to --dev (default: --dev, sent with XDP_TX)")
	dstMAC := fs.String("dst-mac", "", "destination MAC address (the next hop's)")
	src := fs.String("src", "", "source address, or an inclusive range ADDR-ADDR")
	srcPorts := fs.String("src-ports", "1024-65535", "source ports, an inclusive range MIN-MAX")
	dst := fs.String("dst", "", "destination ADDR:PORT")
	proto := fs.String("proto", "udp", "udp, or tcp (SYNs)")
	flows := fs.Int("flows", 0, "distinct (source address, port) pairs to cycle through (default: all of the ranges)")
	size := fs.Int("size", pktgen.MinSize, "frame length without FCS")
	workers := fs.Int("workers", 1, "senders, one per CPU")
	count := fs.Uint64("count", 0, "frames to send")
	duration := fs.Duration("duration", 0, "how long to send")
	_ = fs.Parse(args)
	if *dev == "" || *dstMAC == "" || *src == "" || *dst == "" || (*count == 0 && *duration == 0) {
		fs.Usage()
		return nil, errors.New("--dev, --dst-mac, --src, --dst and --count or --duration are required")
	}

	p, err := pktgen.ParseProto(*proto)
	if err != nil {
		return nil, err
	}
	mac, err := net.ParseMAC(*dstMAC)
	if err != nil {
		return nil, fmt.Errorf("parse --dst-mac: %w", err)
	}
	first, last, err := parseAddrRange(*src)
	if err != nil {
		return nil, err
	}
	ports, err := parsePortRange(*srcPorts)
	if err != nil {
		return nil, err
	}
	to, err := netip.ParseAddrPort(*dst)
	if err != nil {
		return nil, fmt.Errorf("parse --dst: %w", err)
	}
	path := nsPath(*nsName)
	out, err := findDevice(path, *dev)
	if err != nil {
		return nil, err
	}
	in := out
	if *ingress != "" {
		if in, err = findDevice(path, *ingress); err != nil {
			return nil, err
		}
	}
	tmpl, err := pktgen.Frame{SrcMAC: out.Attrs().HardwareAddr, DstMAC: mac,
		Src: netip.AddrPortFrom(first, ports.Min), Dst: to, Proto: p, Size: *size}.Bytes()
	if err != nil {
		return nil, err
	}
	g := pktgen.Generator{
		Netns: path, Ifindex: in.Attrs().Index, Template: tmpl,
		SrcPorts: ports, SrcAddrs: pktgen.AddrRange{First: first, Last: last},
		Flows: *flows, Workers: *workers,
	}
	if in != out {
		g.Redirect = out.Attrs().Index
	}
	return g.Run(ctx, *count, *duration)
}

func sink(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("pktgen sink", flag.ExitOnError)
	nsName := fs.String("netns", "", "network namespace: a name under /var/run/netns or a path (default: this one)")
	dev := fs.String("dev", "", "device to count and drop arrivals on")
	match := fs.String("match", "", "also count frames to this ADDR:PORT (an expected backend)")
	proto := fs.String("proto", "udp", "protocol of --match: udp or tcp")
	duration := fs.Duration("duration", 0, "how long to count (default: until interrupted)")
	generic := fs.Bool("generic", false, "attach in generic (SKB) mode instead of native")
	_ = fs.Parse(args)
	if *dev == "" {
		fs.Usage()
		return nil, errors.New("--dev is required")
	}
	cfg := pktgen.SinkConfig{Netns: nsPath(*nsName), Dev: *dev, Generic: *generic}
	if *match != "" {
		var err error
		if cfg.Match, err = netip.ParseAddrPort(*match); err != nil {
			return nil, fmt.Errorf("parse --match: %w", err)
		}
		if cfg.MatchProto, err = pktgen.ParseProto(*proto); err != nil {
			return nil, err
		}
	}
	s, err := pktgen.AttachSink(cfg)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	start := time.Now()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	<-ctx.Done()
	c, err := s.Count()
	if err != nil {
		return nil, err
	}
	el := time.Since(start)
	return struct {
		pktgen.SinkCount
		Duration time.Duration `json:"durationNs"`
		PPS      float64       `json:"pps"`
	}{c, el, float64(c.Packets) / el.Seconds()}, nil
}

func nsPath(name string) string {
	if name == "" || strings.Contains(name, "/") {
		return name
	}
	return "/var/run/netns/" + name
}

func findDevice(nsPath, name string) (netlink.Link, error) {
	h := &netlink.Handle{}
	if nsPath != "" {
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
		}
		defer ns.Close()
		if h, err = netlink.NewHandleAt(ns); err != nil {
			return nil, fmt.Errorf("open netlink in %s: %w", nsPath, err)
		}
		defer h.Close()
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find device %s: %w", name, err)
	}
	return l, nil
}

func parseAddrRange(s string) (netip.Addr, netip.Addr, error) {
	a, b, isRange := strings.Cut(s, "-")
	first, err := netip.ParseAddr(a)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("parse --src: %w", err)
	}
	if !isRange {
		return first, first, nil
	}
	last, err := netip.ParseAddr(b)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("parse --src: %w", err)
	}
	return first, last, nil
}

func parsePortRange(s string) (pktgen.PortRange, error) {
	a, b, isRange := strings.Cut(s, "-")
	if !isRange {
		b = a
	}
	lo, err1 := strconv.ParseUint(a, 10, 16)
	hi, err2 := strconv.ParseUint(b, 10, 16)
	if err := errors.Join(err1, err2); err != nil {
		return pktgen.PortRange{}, fmt.Errorf("parse --src-ports %q: %w", s, err)
	}
	return pktgen.PortRange{Min: uint16(lo), Max: uint16(hi)}, nil
}
