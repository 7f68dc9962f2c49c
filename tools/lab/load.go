package lab

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicelb/sluice/internal/testutil"
)

// StartStreamServer serves long-lived TCP connections on port inside ns: each line a client
// sends comes back prefixed with "name ". The stand-in for a database connection or a stream.
func StartStreamServer(ns *testutil.Netns, name string, port uint16) (func(), error) {
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)) // both families
		return err
	}); err != nil {
		return nil, fmt.Errorf("listen for streams in %s: %w", ns.Name, err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				r := bufio.NewScanner(c)
				for r.Scan() {
					if _, err := fmt.Fprintf(c, "%s %s\n", name, r.Text()); err != nil {
						return
					}
				}
			}()
		}
	}()
	return func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}, nil
}

// Stream is a long-lived connection to a stream server.
type Stream struct {
	conn    net.Conn
	r       *bufio.Reader
	Backend string // who answers it
}

// OpenStream connects from inside ns and asks who is at the other end.
func OpenStream(ns *testutil.Netns, addr netip.AddrPort) (*Stream, error) {
	c, err := dial(ns, "tcp", addr, Timeout)
	if err != nil {
		return nil, err
	}
	s := &Stream{conn: c, r: bufio.NewReader(c)}
	who, err := s.Ping()
	if err != nil {
		c.Close()
		return nil, err
	}
	s.Backend = who
	return s, nil
}

// Ping sends a line and waits for its echo; it returns the backend's name.
func (s *Stream) Ping() (string, error) {
	_ = s.conn.SetDeadline(time.Now().Add(Timeout))
	if _, err := fmt.Fprintln(s.conn, "ping"); err != nil {
		return "", fmt.Errorf("write stream: %w", err)
	}
	line, err := s.r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read stream: %w", err)
	}
	who, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	if rest != "ping" {
		return "", fmt.Errorf("stream answered %q", line)
	}
	return who, nil
}

// Close ends the stream.
func (s *Stream) Close() { s.conn.Close() }

// Load sends HTTP requests, each on a new connection, from workers goroutines until stopped.
type Load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []error
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

// StartLoad starts the workers, each pausing between requests.
func StartLoad(ns *testutil.Netns, addr netip.AddrPort, workers int, pause time.Duration) *Load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Load{cancel: cancel}
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil {
				if _, err := HTTPGet(ns, addr); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 10 {
						l.errs = append(l.errs, err)
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
				time.Sleep(pause)
			}
		}()
	}
	return l
}

// Stop ends the load and reports successes, failures and the first errors.
func (l *Load) Stop() (ok, failed int64, errs []error) {
	l.cancel()
	l.wg.Wait()
	return l.ok.Load(), l.failed.Load(), l.errs
}
