package netpolicy

import (
	"fmt"
	"strconv"
	"strings"
)

// PortRange is an inclusive range of TCP ports, First <= Last, both in
// 1..65535.
type PortRange struct {
	First, Last uint16
}

// Contains reports whether port is in r.
func (r PortRange) Contains(port uint16) bool { return r.First <= port && port <= r.Last }

// String returns "5432" for a single port and "5000-6000" for a range.
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return strconv.Itoa(int(r.First)) + "-" + strconv.Itoa(int(r.Last))
}

// maxPortItems bounds a port list; Azure allows fewer.
const maxPortItems = 256

// ParsePorts parses a destination port specification: "*" (every port,
// 1-65535), a port ("5432"), a range ("5000-6000") or a comma-separated
// list of ports and ranges ("5432, 6000-6010"). Spaces around items are
// ignored; ports are decimal, 1 to 65535.
func ParsePorts(s string) ([]PortRange, error) {
	if strings.TrimSpace(s) == Any {
		return []PortRange{{1, 65535}}, nil
	}
	items := strings.Split(s, ",")
	if len(items) > maxPortItems {
		return nil, fmt.Errorf("%d port items; the limit is %d", len(items), maxPortItems)
	}
	out := make([]PortRange, 0, len(items))
	for _, item := range items {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, fmt.Errorf("%q has an empty item; want %q, a port, a range such as 5000-6000, or a comma-separated list of those", s, Any)
		}
		if item == Any {
			return nil, fmt.Errorf("%q lists %q with other ports; %q already covers every port", s, Any, Any)
		}
		lo, hi, isRange := strings.Cut(item, "-")
		first, err := parsePort(lo)
		if err != nil {
			return nil, err
		}
		last := first
		if isRange {
			if last, err = parsePort(hi); err != nil {
				return nil, err
			}
			if first > last {
				return nil, fmt.Errorf("range %q starts after it ends", item)
			}
		}
		out = append(out, PortRange{first, last})
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

func formatPorts(rs []PortRange) string {
	var b strings.Builder
	for i, r := range rs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(r.String())
	}
	return b.String()
}
