package nft

import (
	"fmt"
	"net/netip"
	"slices"
)

// MaxRanges caps each family's allow-list so the whole table fits in one
// netlink batch under the default socket buffer (about 80 bytes a range).
const MaxRanges = 1024

// Range is an inclusive range of addresses of one family, the unit nftables
// interval sets store.
type Range struct {
	From, To netip.Addr
}

// PrefixRange is the range a CIDR prefix covers.
func PrefixRange(p netip.Prefix) Range {
	p = p.Masked()
	from := p.Addr()
	to := from.As16()
	for i := p.Bits() + 128 - from.BitLen(); i < 128; i++ {
		to[i/8] |= 1 << (7 - i%8)
	}
	if from.Is4() {
		return Range{From: from, To: netip.AddrFrom4([4]byte(to[12:]))}
	}
	return Range{From: from, To: netip.AddrFrom16(to)}
}

// AddrRange is the range of the single address a.
func AddrRange(a netip.Addr) Range { return Range{From: a, To: a} }

func (r Range) String() string {
	if r.From == r.To {
		return r.From.String()
	}
	return r.From.String() + "-" + r.To.String()
}

// Rules is what Apply enforces: TCP connections to Port are accepted from
// the allowed ranges and dropped from everywhere else. Traffic to other ports
// is not touched. Empty lists drop every connection to Port over that family.
type Rules struct {
	// Port is the gateway's TCP listen port.
	Port uint16
	// AllowV4 are the IPv4 source ranges allowed to connect. IPv4-mapped
	// IPv6 addresses are accepted and unmapped.
	AllowV4 []Range
	// AllowV6 are the IPv6 source ranges allowed to connect. IPv4-mapped
	// addresses are refused here: IPv4 packets never carry them, so they
	// belong in AllowV4.
	AllowV6 []Range
}

// interval is a merged range ready for the kernel: the elements are From as
// an interval start and, unless To is the family's last address, To+1 as an
// interval end.
type interval struct {
	from netip.Addr
	end  netip.Addr // To+1; invalid when the range runs to the last address
}

// check validates r and returns its merged, sorted intervals per family.
func (r Rules) check() (v4, v6 []interval, err error) {
	if r.Port == 0 {
		return nil, nil, fmt.Errorf("nft: port 0 is not a listen port")
	}
	if v4, err = merge(r.AllowV4, true); err != nil {
		return nil, nil, fmt.Errorf("nft: AllowV4: %w", err)
	}
	if v6, err = merge(r.AllowV6, false); err != nil {
		return nil, nil, fmt.Errorf("nft: AllowV6: %w", err)
	}
	return v4, v6, nil
}

// merge validates ranges of one family and merges overlapping and adjacent
// ones, since the kernel refuses overlapping intervals.
func merge(rs []Range, want4 bool) ([]interval, error) {
	if len(rs) > MaxRanges {
		return nil, fmt.Errorf("%d ranges exceed the limit of %d", len(rs), MaxRanges)
	}
	norm := make([]Range, 0, len(rs))
	for _, r := range rs {
		from, to := r.From, r.To
		if want4 {
			from, to = from.Unmap(), to.Unmap()
		}
		for _, a := range [...]netip.Addr{from, to} {
			switch {
			case !a.IsValid():
				return nil, fmt.Errorf("range %v has an invalid address", r)
			case a.Zone() != "":
				return nil, fmt.Errorf("range %v has a zone", r)
			case a.Is4() != want4 || a.Is4In6():
				return nil, fmt.Errorf("range %v is not of this family", r)
			}
		}
		if to.Less(from) {
			return nil, fmt.Errorf("range %v ends before it starts", r)
		}
		norm = append(norm, Range{From: from, To: to})
	}
	slices.SortFunc(norm, func(a, b Range) int { return a.From.Compare(b.From) })
	var out []interval
	for i := 0; i < len(norm); {
		cur := norm[i]
		i++
		// Absorb every following range that starts at or before To+1.
		for i < len(norm) {
			next := cur.To.Next()
			if !next.IsValid() || norm[i].From.Compare(next) <= 0 {
				if norm[i].To.Compare(cur.To) > 0 {
					cur.To = norm[i].To
				}
				i++
				continue
			}
			break
		}
		out = append(out, interval{from: cur.From, end: cur.To.Next()})
	}
	return out, nil
}

// checkTable validates a table name: a letter, then up to 63 letters,
// digits, '_' or '-', which nft's own parser accepts unquoted.
func checkTable(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("nft: table name %q must have 1 to 64 characters", name)
	}
	for i, c := range []byte(name) {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || c == '_' || c == '-')) {
			return fmt.Errorf("nft: table name %q must be a letter followed by letters, digits, '_' or '-'", name)
		}
	}
	return nil
}
