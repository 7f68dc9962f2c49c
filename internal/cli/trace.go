package cli

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"text/tabwriter"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/maps"
)

// TraceJSON is `trace -o json`: what the datapath would do with the packet.
type TraceJSON struct {
	Hook        string `json:"hook"` // xdp or tc
	Device      string `json:"device"`
	Verdict     string `json:"verdict"` // XDP_TX, XDP_PASS, XDP_DROP, XDP_REDIRECT, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT
	Stage       string `json:"stage"`   // see traceStages
	Reason      string `json:"reason,omitempty"`
	Service     string `json:"service,omitempty"`
	Backend     string `json:"backend,omitempty"`
	Local       bool   `json:"local"`
	Input       string `json:"input"`            // proto src -> dst
	Output      string `json:"output,omitempty"` // the rewritten packet's tuple
	Explanation string `json:"explanation"`
}

var traceStages = map[datapath.SluiceTraceStage][2]string{
	datapath.SluiceTraceStageTRACE_NONE:        {"none", "the program decided nothing it records"},
	datapath.SluiceTraceStageTRACE_NOT_OURS:    {"not-ours", "not a NodePort or SNAT port: the node's own traffic, passed untouched"},
	datapath.SluiceTraceStageTRACE_PARSE:       {"parse", "a fragment or malformed packet: passed untouched"},
	datapath.SluiceTraceStageTRACE_TO_TC:       {"to-tc", "XDP leaves it to tc (next hop unresolved, VLAN tag, or an egress device without XDP)"},
	datapath.SluiceTraceStageTRACE_ESTABLISHED: {"established", "an existing flow: sent to the backend it already has"},
	datapath.SluiceTraceStageTRACE_REPLY:       {"reply", "a backend's reply: translated back to the client"},
	datapath.SluiceTraceStageTRACE_NO_FRONTEND: {"no-frontend", "no service on this address and port: passed to the node"},
	datapath.SluiceTraceStageTRACE_REJECT:      {"reject", "the service has no ready endpoint: refused (TCP RST / ICMP port unreachable)"},
	datapath.SluiceTraceStageTRACE_NO_FLOW:     {"no-flow", "a TCP segment other than SYN with no flow: left to the kernel"},
	datapath.SluiceTraceStageTRACE_NEW_FLOW:    {"new-flow", "a new flow: a backend was picked for it"},
	datapath.SluiceTraceStageTRACE_DROP:        {"drop", "dropped"},
	datapath.SluiceTraceStageTRACE_RELATED:     {"related", "an ICMP error about a flow: translated for the flow's other end"},
	datapath.SluiceTraceStageTRACE_TOO_BIG:     {"too-big", "over the next hop's MTU: 'fragmentation needed' sent back to the sender (DF), or translated and handed to the kernel to fragment"},
}

func verdictName(xdp bool, v uint32) string {
	if xdp {
		if n, ok := map[uint32]string{0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}[v]; ok {
			return n
		}
	} else if n, ok := map[uint32]string{0: "TC_ACT_OK", 2: "TC_ACT_SHOT", 7: "TC_ACT_REDIRECT"}[v]; ok {
		return n
	}
	return fmt.Sprintf("verdict %d", v)
}

// tracePacket builds the frame to trace.
func tracePacket(dstMAC net.HardwareAddr, proto string, src, dst netip.AddrPort, flags string) ([]byte, error) {
	if src.Addr().Is4() != dst.Addr().Is4() {
		return nil, fmt.Errorf("trace %s -> %s: the addresses are of two families", src, dst)
	}
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip4 := &layers.IPv4{Version: 4, TTL: 64, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	ip6 := &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	var ip interface {
		gopacket.NetworkLayer
		gopacket.SerializableLayer
	} = ip4
	setProto := func(p layers.IPProtocol) { ip4.Protocol, ip6.NextHeader = p, p }
	if src.Addr().Is6() {
		eth.EthernetType, ip = layers.EthernetTypeIPv6, ip6
	}
	var l4 gopacket.SerializableLayer
	switch proto {
	case "tcp":
		setProto(layers.IPProtocolTCP)
		tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: 1, Window: 64240}
		for _, f := range strings.ToUpper(flags) {
			switch f {
			case 'S':
				tcp.SYN = true
			case 'A':
				tcp.ACK = true
			case 'F':
				tcp.FIN = true
			case 'R':
				tcp.RST = true
			case 'P':
				tcp.PSH = true
			default:
				return nil, fmt.Errorf("parse TCP flags %q: want letters of SAFRP", flags)
			}
		}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		l4 = tcp
	case "udp":
		setProto(layers.IPProtocolUDP)
		udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
		_ = udp.SetNetworkLayerForChecksum(ip)
		l4 = udp
	default:
		return nil, fmt.Errorf("parse protocol %q: want tcp or udp", proto)
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, l4, gopacket.Payload("sluicectl trace"))
	return buf.Bytes(), err
}

// tupleOf describes a frame's IPv4 tuple, or an ICMP error.
func tupleOf(frame []byte) string {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if ip6, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ip6 != nil {
		return tupleOf6(p, ip6)
	}
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip == nil {
		return "(not IP)"
	}
	switch l := p.TransportLayer().(type) {
	case *layers.TCP:
		flags := tcpFlags(l)
		return fmt.Sprintf("tcp %s:%d -> %s:%d [%s] ttl %d", ip.SrcIP, l.SrcPort, ip.DstIP, l.DstPort, flags, ip.TTL)
	case *layers.UDP:
		return fmt.Sprintf("udp %s:%d -> %s:%d ttl %d", ip.SrcIP, l.SrcPort, ip.DstIP, l.DstPort, ip.TTL)
	}
	if icmp, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		return fmt.Sprintf("icmp %s -> %s %s", ip.SrcIP, ip.DstIP, icmp.TypeCode)
	}
	return fmt.Sprintf("%s %s -> %s", ip.Protocol, ip.SrcIP, ip.DstIP)
}

// loadTraceProgram loads a copy of the datapath, built with cfg_trace (it writes no entry and
// counts nothing) and the agent's settings, on the live maps.
func loadTraceProgram(e *Env, k *maps.Kernel, info maps.AgentInfo, ifindex int) (*datapath.Datapath, error) {
	cfg := info.Config
	cfg.Trace = true
	cfg.XDPIfindex = uint32(ifindex) // test runs take no xdp_md before Linux 5.14
	spec, err := datapath.Spec(cfg)
	if err != nil {
		return nil, err
	}
	live := e.objs.Pinned()
	for name, m := range live {
		spec.Maps[name].MaxEntries = m.MaxEntries()
	}
	dp := datapath.Datapath{Config: cfg} // an IPv6 copy loaded beside it traces too
	if err := spec.LoadAndAssign(&dp.Objs, &ebpf.CollectionOptions{MapReplacements: live}); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load trace program: %+v", ve)
		}
		return nil, fmt.Errorf("load trace program: %w", err)
	}
	return &dp, nil
}

func trace(e *Env, args []string) error {
	var proto, src, dst, device, flags, hook string
	if err := subFlags("trace", args, func(fs *flag.FlagSet) {
		fs.StringVar(&proto, "proto", "tcp", "tcp or udp")
		fs.StringVar(&src, "src", "", "client IP:PORT")
		fs.StringVar(&dst, "dst", "", "destination IP:PORT (a node address and NodePort, say)")
		fs.StringVar(&device, "device", "", "device the packet arrives on (default: the agent's first)")
		fs.StringVar(&flags, "flags", "S", "TCP flags: letters of S A F R P")
		fs.StringVar(&hook, "hook", "", "xdp or tc (default: xdp where it is attached, else tc)")
	}); err != nil {
		return err
	}
	srcAP, err := netip.ParseAddrPort(src)
	if err != nil {
		return fmt.Errorf("parse --src: %w", err)
	}
	dstAP, err := netip.ParseAddrPort(dst)
	if err != nil {
		return fmt.Errorf("parse --dst: %w", err)
	}
	k, err := e.Maps()
	if err != nil {
		return err
	}
	info, err := k.AgentInfo()
	if err != nil {
		return err
	}
	var dev *maps.DeviceInfo
	for i := range info.Devices {
		if device == "" || info.Devices[i].Name == device {
			dev = &info.Devices[i]
			break
		}
	}
	if dev == nil {
		if device == "" {
			return errors.New("the agent is attached to no device (is it running?); name one with --device")
		}
		dev = &maps.DeviceInfo{Name: device, XDPMode: "off"}
	}
	ifc, err := net.InterfaceByName(dev.Name)
	if err != nil {
		return fmt.Errorf("find device %s: %w", dev.Name, err)
	}
	if hook == "" {
		hook = "xdp"
		if dev.XDPMode == "off" {
			hook = "tc"
		}
	}
	if hook != "xdp" && hook != "tc" {
		return fmt.Errorf("parse --hook %q: want xdp or tc", hook)
	}
	frame, err := tracePacket(ifc.HardwareAddr, proto, srcAP, dstAP, flags)
	if err != nil {
		return err
	}
	dp, err := loadTraceProgram(e, k, info, ifc.Index)
	if err != nil {
		return err
	}
	defer dp.Close()
	// An IPv6 packet goes through the same entry program, which hands it to a copy of the
	// IPv6 programs; the record is theirs.
	var dp6 *datapath.IPv6
	if dstAP.Addr().Is6() {
		if e.objs6 == nil {
			return fmt.Errorf("trace %s: the agent serves no IPv6 (no IPv6 maps pinned in %s)", dstAP, e.BPFFS)
		}
		if dp6, err = dp.LoadIPv6Copy(e.objs6); err != nil {
			return fmt.Errorf("load IPv6 trace program: %w", err)
		}
		defer dp6.Close()
	}
	prog := dp.Objs.SluiceXdp
	if hook == "tc" {
		prog = dp.Objs.SluiceTcIngress
	}
	ret, out, err := datapath.RunOnce(prog, hook == "xdp", ifc.Index, frame)
	if err != nil {
		return err
	}
	var rec traceRec
	if dp6 != nil {
		var r datapath.Sluice6TraceRecord
		if err := dp6.Objs.SluiceTrace6.Lookup(uint32(0), &r); err != nil {
			return fmt.Errorf("read trace record: %w", err)
		}
		rec = traceRec{r.Stage, r.Reason, r.SvcId, r.BackendId, netip.AddrPortFrom(netip.AddrFrom16(r.NatDaddr.B), maps.PortFrom16(r.NatDport)), r.Flags}
	} else {
		var r datapath.SluiceTraceRecord
		if err := dp.Objs.SluiceTrace.Lookup(datapath.SluiceTraceStage(0), &r); err != nil {
			return fmt.Errorf("read trace record: %w", err)
		}
		var nat [4]byte
		binary.NativeEndian.PutUint32(nat[:], r.NatDaddr)
		rec = traceRec{r.Stage, r.Reason, r.SvcId, r.BackendId, netip.AddrPortFrom(netip.AddrFrom4(nat), maps.PortFrom16(r.NatDport)), r.Flags}
	}
	res := describeTrace(k, rec)
	res.Hook, res.Device, res.Verdict = hook, dev.Name, verdictName(hook == "xdp", ret)
	res.Input = tupleOf(frame)
	if string(out) != string(frame) {
		res.Output = tupleOf(out)
	}
	return e.emit(res, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "packet\t%s\n", res.Input)
		fmt.Fprintf(w, "hook\t%s on %s\n", res.Hook, res.Device)
		fmt.Fprintf(w, "verdict\t%s\n", res.Verdict)
		fmt.Fprintf(w, "why\t%s (%s)\n", res.Explanation, res.Stage)
		if res.Service != "" {
			fmt.Fprintf(w, "service\t%s\n", res.Service)
		}
		if res.Backend != "" {
			kind := "remote (DNAT + SNAT)"
			if res.Local {
				kind = "local (DNAT only)"
			}
			fmt.Fprintf(w, "backend\t%s, %s\n", res.Backend, kind)
		}
		if res.Output != "" {
			fmt.Fprintf(w, "rewritten\t%s\n", res.Output)
		}
		fmt.Fprintln(w, "state\tnothing written: trace runs a copy of the program that records no flow and counts nothing")
	})
}

// traceRec is what a trace record of either family says.
type traceRec struct {
	Stage, Reason, SvcId, BackendId uint32
	NatDst                          netip.AddrPort
	Flags                           uint32
}

func describeTrace(k *maps.Kernel, rec traceRec) TraceJSON {
	st := traceStages[datapath.SluiceTraceStage(rec.Stage)]
	res := TraceJSON{Stage: st[0], Explanation: st[1]}
	if rec.Reason != 0 {
		res.Reason = maps.ReasonNames[maps.Reason(rec.Reason-1)]
		if res.Stage == "drop" {
			res.Explanation = "dropped: " + res.Reason
		}
	}
	if rec.SvcId != 0 {
		if _, name, err := names(k); err == nil {
			res.Service = name(rec.SvcId)
		}
	}
	if rec.BackendId != 0 && rec.Stage != uint32(datapath.SluiceTraceStageTRACE_REPLY) {
		res.Backend = rec.NatDst.String()
		res.Local = rec.Flags&maps.CTLocal != 0
	}
	return res
}

func tupleOf6(p gopacket.Packet, ip *layers.IPv6) string {
	switch l := p.TransportLayer().(type) {
	case *layers.TCP:
		flags := tcpFlags(l)
		return fmt.Sprintf("tcp [%s]:%d -> [%s]:%d [%s] hop limit %d", ip.SrcIP, l.SrcPort, ip.DstIP, l.DstPort, flags, ip.HopLimit)
	case *layers.UDP:
		return fmt.Sprintf("udp [%s]:%d -> [%s]:%d hop limit %d", ip.SrcIP, l.SrcPort, ip.DstIP, l.DstPort, ip.HopLimit)
	}
	if icmp, ok := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ok {
		return fmt.Sprintf("icmpv6 %s -> %s %s", ip.SrcIP, ip.DstIP, icmp.TypeCode)
	}
	return fmt.Sprintf("%s %s -> %s", ip.NextHeader, ip.SrcIP, ip.DstIP)
}

// tcpFlags are l's SYN, ACK, FIN and RST as letters (SA, R, ...).
func tcpFlags(l *layers.TCP) string {
	flags := ""
	for _, f := range []struct {
		on bool
		c  string
	}{{l.SYN, "S"}, {l.ACK, "A"}, {l.FIN, "F"}, {l.RST, "R"}} {
		if f.on {
			flags += f.c
		}
	}
	return flags
}
