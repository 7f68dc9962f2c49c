package lab

import (
	"encoding/binary"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/testutil"
)

// Raw frames, for protocols the machine's kernel has no sockets for (SCTP here): crafted
// frames sent from one namespace's device and captured on another's.

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func packetSocket(ns *testutil.Netns, dev string) (int, int, error) {
	var fd, ifindex int
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		ifindex = ifc.Index
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("open packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", dev, err)
		}
		return nil
	})
	return fd, ifindex, err
}

// SendFrame transmits frame as it is out of dev in ns.
func SendFrame(ns *testutil.Netns, dev string, frame []byte) error {
	fd, ifindex, err := packetSocket(ns, dev)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6, Addr: [8]byte(append(append([]byte(nil), frame[:6]...), 0, 0))}); err != nil {
		return fmt.Errorf("send frame on %s: %w", dev, err)
	}
	return nil
}

// Capture receives frames on dev in ns until match accepts one or timeout passes.
type Capture struct{ fd int }

// StartCapture opens a capture on dev in ns; start it before sending what it should see.
func StartCapture(ns *testutil.Netns, dev string) (*Capture, error) {
	fd, _, err := packetSocket(ns, dev)
	if err != nil {
		return nil, err
	}
	return &Capture{fd: fd}, nil
}

// Next returns the first frame (received, not sent) that match accepts.
func (c *Capture) Next(timeout time.Duration, match func([]byte) bool) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("capture: no matching frame within %v", timeout)
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return nil, err
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			return nil, fmt.Errorf("capture: %w", err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if match(buf[:n]) {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

func (c *Capture) Close() { unix.Close(c.fd) }

// IsSCTP reports whether frame is an untagged IPv4 SCTP packet to port dport (0: any).
func IsSCTP(frame []byte, dport uint16) bool {
	if len(frame) < 14+20+12 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 || frame[23] != 132 {
		return false
	}
	ihl := int(frame[14]&0x0f) * 4
	return len(frame) >= 14+ihl+12 && (dport == 0 || binary.BigEndian.Uint16(frame[14+ihl+2:]) == dport)
}
