package pktgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/perf"
)

// SinkConfig says where the sink listens and what it records besides counting.
type SinkConfig struct {
	// Netns is the path of the namespace Dev is in; empty means the calling thread's.
	Netns string
	Dev   string
	// Generic attaches in generic (SKB) mode; the default is native, which a veth has and
	// which is what makes XDP frames sent into its peer arrive.
	Generic bool
	// Frames to Match (IPv4 or IPv6) over MatchProto (an expected backend) are also counted
	// as Matched.
	Match      netip.AddrPort
	MatchProto Proto
	// Sample keeps up to this many frames per CPU (their first 256 bytes) for Samples, one in
	// every SampleEvery (0 or 1: every frame).
	Sample      int
	SampleEvery int
	// TrackSrcPorts counts frames per source port, for SrcPorts.
	TrackSrcPorts bool
	// Scribble overwrites each frame's first 64 bytes (80 when it has them) after counting, as
	// a NAT rewriting in place would; tests use it to show the generator rebuilds every frame.
	Scribble bool
}

// SinkCount is what the sink has seen since it was attached.
type SinkCount struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	Matched uint64 `json:"matched"`
}

// Sink is the sink attached to a device.
type Sink struct {
	objs   sinkObjects
	link   link.Link
	reader *perf.Reader
	lost   uint64
}

// sampleHdr mirrors struct sample_hdr in bpf/sink.c.
type sampleHdr struct {
	Len, Cap uint32
}

const sampleMax = 256 // SAMPLE_MAX in bpf/sink.c

// AttachSink loads the sink and attaches it to cfg.Dev. Close detaches it.
func AttachSink(cfg SinkConfig) (*Sink, error) {
	spec, err := loadSink()
	if err != nil {
		return nil, fmt.Errorf("load sink spec: %w", err)
	}
	if !cfg.TrackSrcPorts {
		spec.Maps[sinkMapSinkPorts].MaxEntries = 1 // the program finds no entry and skips
	}
	var matchAddr [4]byte
	var matchAddr6 [4]uint32
	ipv6 := false
	if cfg.MatchProto != 0 {
		a := cfg.Match.Addr()
		switch {
		case a.Is4():
			matchAddr = a.As4()
		case a.Is6() && !a.Is4In6():
			ipv6 = true
			b := a.As16()
			for i := range matchAddr6 {
				matchAddr6[i] = binary.NativeEndian.Uint32(b[4*i:])
			}
		default:
			return nil, fmt.Errorf("attach sink: match %v: want an IPv4 or IPv6 address and port", cfg.Match)
		}
	}
	var matchPort [2]byte
	binary.BigEndian.PutUint16(matchPort[:], cfg.Match.Port())
	vars := map[string]any{
		// Network order in memory, as the program compares them with the frame.
		sinkVarCfgMatchAddr:   binary.NativeEndian.Uint32(matchAddr[:]),
		sinkVarCfgMatchAddr6:  matchAddr6,
		sinkVarCfgMatchIpv6:   boolByte(ipv6),
		sinkVarCfgMatchPort:   binary.NativeEndian.Uint16(matchPort[:]),
		sinkVarCfgMatchProto:  uint8(cfg.MatchProto),
		sinkVarCfgSample:      uint32(max(cfg.Sample, 0)),
		sinkVarCfgSampleEvery: uint32(max(cfg.SampleEvery, 1)),
		sinkVarCfgTrackPorts:  boolByte(cfg.TrackSrcPorts),
		sinkVarCfgScribble:    boolByte(cfg.Scribble),
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	s := &Sink{}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load sink: %+v", ve)
		}
		return nil, fmt.Errorf("load sink: %w", err)
	}
	if cfg.Sample > 0 {
		// Room for every sample a CPU may keep: header, perf record header, padding.
		s.reader, err = perf.NewReader(s.objs.SinkSamples, cfg.Sample*(sampleMax+32)+os.Getpagesize())
		if err != nil {
			s.objs.Close()
			return nil, fmt.Errorf("open sink samples: %w", err)
		}
	}
	flags := link.XDPDriverMode
	if cfg.Generic {
		flags = link.XDPGenericMode
	}
	err = inNetns(cfg.Netns, func() error {
		ifc, err := net.InterfaceByName(cfg.Dev)
		if err != nil {
			return fmt.Errorf("find device %s: %w", cfg.Dev, err)
		}
		s.link, err = link.AttachXDP(link.XDPOptions{Program: s.objs.SinkXdp, Interface: ifc.Index, Flags: flags})
		if err != nil {
			return fmt.Errorf("attach sink to %s: %w", cfg.Dev, err)
		}
		return nil
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// Count sums the per-CPU counters.
func (s *Sink) Count() (SinkCount, error) {
	var per []sinkStats
	if err := s.objs.SinkStats.Lookup(uint32(0), &per); err != nil {
		return SinkCount{}, fmt.Errorf("read sink counters: %w", err)
	}
	var c SinkCount
	for _, p := range per {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
		c.Matched += p.Matched
	}
	return c, nil
}

// Wait polls Count until it reaches packets, ctx ends, or the count stops growing for idle
// (frames still in flight arrive within microseconds; a stalled count is final).
func (s *Sink) Wait(ctx context.Context, packets uint64, idle time.Duration) (SinkCount, error) {
	last, since := SinkCount{}, time.Now()
	for {
		c, err := s.Count()
		if err != nil || c.Packets >= packets {
			return c, err
		}
		if c.Packets != last.Packets {
			last, since = c, time.Now()
		} else if time.Since(since) >= idle {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return c, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Samples returns the frames kept since the last call (at most 256 bytes of each), without
// waiting for more, and how many the kernel could not keep for lack of room.
func (s *Sink) Samples() ([][]byte, uint64, error) {
	if s.reader == nil {
		return nil, 0, errors.New("read sink samples: the sink keeps none (Sample is 0)")
	}
	// A deadline in the past drains what is there and then stops.
	s.reader.SetDeadline(time.Now())
	var out [][]byte
	var rec perf.Record
	for {
		err := s.reader.ReadInto(&rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out, s.lost, nil
		}
		if err != nil {
			return out, s.lost, fmt.Errorf("read sink samples: %w", err)
		}
		s.lost += rec.LostSamples
		if len(rec.RawSample) < 8 {
			continue
		}
		h := sampleHdr{binary.NativeEndian.Uint32(rec.RawSample), binary.NativeEndian.Uint32(rec.RawSample[4:])}
		body := rec.RawSample[8:]
		if int(h.Cap) > len(body) {
			return out, s.lost, fmt.Errorf("read sink samples: a record holds %d bytes, its header says %d", len(body), h.Cap)
		}
		out = append(out, append([]byte(nil), body[:h.Cap]...))
	}
}

// SrcPorts returns how many frames each source port had (only ports seen), when the sink
// tracks them.
func (s *Sink) SrcPorts() (map[uint16]uint64, error) {
	if s.objs.SinkPorts.MaxEntries() < 65536 {
		return nil, errors.New("read sink ports: the sink does not track them (TrackSrcPorts is false)")
	}
	keys := make([]uint32, 65536)
	vals := make([]uint64, 65536)
	var cursor ebpf.MapBatchCursor
	n, err := s.objs.SinkPorts.BatchLookup(&cursor, keys, vals, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read sink ports: %w", err)
	}
	ports := map[uint16]uint64{}
	for i := range n {
		if vals[i] != 0 {
			ports[uint16(keys[i])] = vals[i]
		}
	}
	return ports, nil
}

// Close detaches the sink and releases it.
func (s *Sink) Close() error {
	var errs []error
	if s.link != nil {
		errs = append(errs, s.link.Close())
	}
	if s.reader != nil {
		errs = append(errs, s.reader.Close())
	}
	errs = append(errs, s.objs.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close sink: %w", err)
	}
	return nil
}
