// Package maglev owns the generation of Maglev consistent-hashing lookup tables (Eisenbud et
// al., "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016, section 3.4):
// given a service's backends, named by stable string keys, and a prime table size M, it fills
// M entries with backend indices so that each backend owns an almost equal share, and adding or
// removing one backend moves few entries that belonged to the others. The datapath hashes a
// flow's tuple to an entry; this package knows nothing of maps, packets or Kubernetes.
//
// The table depends only on the set of keys (with their weights) and M, never on the order of
// the input, on the process or on the host: every node and every agent restart must compute
// the same table, or a flow would reach a different backend through another node or after a
// restart. The hashes (FNV-1a 64 then two seeded 64-bit finalisers) and the fill order are
// therefore part of a compatibility contract, pinned by a golden test: changing either remaps
// nearly every flow of every service during a rolling upgrade.
package maglev

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

const (
	// DefaultTableSize (the largest prime below 2^14) gives every backend of a service with up
	// to ~160 backends 100 or more entries (the paper asks for M ≫ N, as balance is only to
	// within one entry and disruption grows as M/N shrinks), at 64 KiB of indices per service.
	DefaultTableSize = 16381
	// MinTableSize is the smallest accepted M. Below it a service with a handful of backends
	// already owns so few entries per backend that one entry's difference is a large imbalance
	// and one removal reshuffles a large share of the table.
	MinTableSize = 251
	// MaxTableSize (2^17-1, a prime) bounds the cost of one service: each entry is a BPF map
	// element written on every change of its backends, so M = 131071 is already 131071 updates
	// and ~0.5 MiB of values per service, multiplied by every service on every node.
	MaxTableSize = 131071
)

// ErrNoBackends is returned for an empty backend list (or one whose weights are all zero):
// there is no table to build. A service without endpoints is a normal state, which the caller
// handles as it does today (the datapath refuses the connection), hence a sentinel to test for.
var ErrNoBackends = errors.New("no backends")

// ValidTableSize reports whether m can be a table size: a prime, so that every skip in
// [1, m-1] is coprime with m and each backend's preference list visits every entry, within
// [MinTableSize, MaxTableSize].
func ValidTableSize(m uint32) error {
	if m < MinTableSize || m > MaxTableSize {
		return fmt.Errorf("check table size %d: outside [%d, %d]", m, MinTableSize, MaxTableSize)
	}
	if !isPrime(m) {
		return fmt.Errorf("check table size %d: not a prime", m)
	}
	return nil
}

// isPrime is trial division: m is at most MaxTableSize, so at most ~180 divisions.
func isPrime(m uint32) bool {
	if m < 2 {
		return false
	}
	if m%2 == 0 {
		return m == 2
	}
	for d := uint32(3); d*d <= m; d += 2 {
		if m%d == 0 {
			return false
		}
	}
	return true
}

// Table returns the lookup table of size m for backends: entry e holds the index in backends
// of the backend that flows hashing to e go to.
//
// Backends are identified by keys (such as "10.0.0.1:8080/TCP") that must be unique and
// stable: a backend's preference list derives from its key alone, not from its position, which
// is what keeps the entries of the other backends in place when one comes or goes. The result
// does not depend on the order of backends (the indices of course follow it).
//
// weights, if not nil, has one weight per backend; nil is the paper's algorithm, where counts
// differ by at most one. The fill runs in rounds of max(weights) sub-rounds, and a backend of
// weight w takes a turn in the first w sub-rounds of each round: its share of entries is w/Σw
// to within w entries, and a backend of weight 0 gets no entry (a drained backend). Spreading
// a backend's turns over the round, rather than giving it w turns in a row, keeps disruption
// near the unweighted figures, and makes equal weights (any value) give the nil table.
// Removing the only backend of the largest weight shortens the round and so reshuffles more.
//
// Errors: ErrNoBackends (wrapped) for no backends or all weights zero; an invalid m; more
// backends than m; a duplicate key; weights of the wrong length.
func Table(backends []string, weights []uint16, m uint32) ([]uint32, error) {
	if err := ValidTableSize(m); err != nil {
		return nil, fmt.Errorf("build table: %w", err)
	}
	n := len(backends)
	if n == 0 {
		return nil, fmt.Errorf("build table: %w", ErrNoBackends)
	}
	if uint64(n) > uint64(m) {
		return nil, fmt.Errorf("build table: %d backends, more than its %d entries", n, m)
	}
	if weights != nil && len(weights) != n {
		return nil, fmt.Errorf("build table: %d weights for %d backends", len(weights), n)
	}

	// The fill visits backends in key order, so the table is independent of the input order.
	order := make([]uint32, n)
	for i := range order {
		order[i] = uint32(i)
	}
	slices.SortFunc(order, func(a, b uint32) int { return strings.Compare(backends[a], backends[b]) })
	for i := 1; i < n; i++ {
		if backends[order[i]] == backends[order[i-1]] {
			return nil, fmt.Errorf("build table: duplicate backend %q", backends[order[i]])
		}
	}

	all := make([]walker, 0, n)
	maxWeight := uint32(1)
	for _, i := range order {
		weight := uint32(1)
		if weights != nil {
			weight = uint32(weights[i])
		}
		if weight == 0 {
			continue
		}
		maxWeight = max(maxWeight, weight)
		offset, skip := permutation(backends[i], m)
		all = append(all, walker{idx: i, pos: offset, skip: skip, weight: weight})
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("build table: all %d weights zero: %w", n, ErrNoBackends)
	}

	table := make([]uint32, m)
	for e := range table {
		table[e] = empty
	}
	// Backends take turns, in key order, each claiming the first still-empty entry of its
	// preference list, until every entry is claimed. Each list is a full permutation, so a turn
	// always finds an empty entry while some remain; the expected total work is O(m log m).
	// Sub-round j of a round gives a turn to the backends of weight > j: sub-round 0 to all,
	// the next ones to those in active, filtered down as j grows, so that a sub-round costs
	// only the turns it gives, whatever the spread of the weights.
	var active []uint32
	if maxWeight > 1 {
		active = make([]uint32, 0, len(all))
	}
	for filled := uint32(0); ; {
		for k := range all {
			all[k].claim(table, m)
			if filled++; filled == m {
				return table, nil
			}
		}
		if maxWeight == 1 {
			continue
		}
		active = active[:0]
		for k := range all {
			if all[k].weight > 1 {
				active = append(active, uint32(k))
			}
		}
		for j := uint32(1); j < maxWeight; j++ {
			kept := active[:0]
			for _, k := range active {
				w := &all[k]
				if w.weight <= j {
					continue
				}
				kept = append(kept, k)
				w.claim(table, m)
				if filled++; filled == m {
					return table, nil
				}
			}
			active = kept
		}
	}
}

// walker is a backend's place in its preference list offset, offset+skip, offset+2·skip, ...
// (mod m), a permutation of the m entries because m is prime and 1 ≤ skip < m. Only the next
// position is kept: the list is walked, never stored (m·n entries would be 16 M for 1000
// backends).
type walker struct {
	idx, pos, skip, weight uint32
}

// empty marks an unclaimed entry: no valid index, as n ≤ m ≤ MaxTableSize.
const empty = ^uint32(0)

// claim gives the walker's backend the first empty entry of its list, at or after pos.
func (w *walker) claim(table []uint32, m uint32) {
	p := w.pos
	for table[p] != empty {
		if p += w.skip; p >= m {
			p -= m
		}
	}
	table[p] = w.idx
	if p += w.skip; p >= m {
		p -= m
	}
	w.pos = p
}

// Seeds of the two finalisers: offset and skip must be independent functions of the key, or
// backends with equal offsets would also share skips and collide all along their lists.
const (
	seedOffset = 0x9e3779b97f4a7c15
	seedSkip   = 0xc2b2ae3d27d4eb4f
)

// permutation returns a key's offset in [0, m) and skip in [1, m) (paper, section 3.4).
func permutation(key string, m uint32) (offset, skip uint32) {
	h := fnv1a64(key)
	offset = uint32(mix64(h^seedOffset) % uint64(m))
	skip = uint32(mix64(h^seedSkip)%uint64(m-1)) + 1
	return offset, skip
}

// fnv1a64 is 64-bit FNV-1a (as hash/fnv's New64a, without its allocation): stable across
// processes and hosts, unlike hash/maphash, whose seeds are per process.
func fnv1a64(s string) uint64 {
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	h := uint64(offset64)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= prime64
	}
	return h
}

// mix64 is MurmurHash3's fmix64 finaliser: FNV-1a of keys that differ in their last byte
// differ mostly in low bits, and every output bit of mix64 depends on every input bit.
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
