package netpolicy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// ErrNotPrivate is matched (errors.Is) by the errors of CheckPrivateAddress
// and CheckListen for an address private access may not use.
var ErrNotPrivate = errors.New("not a private address")

// privatePrefixes are the addresses private access may listen on.
var privatePrefixes = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),     // RFC 1918
	netip.MustParsePrefix("172.16.0.0/12"),  // RFC 1918
	netip.MustParsePrefix("192.168.0.0/16"), // RFC 1918
	netip.MustParsePrefix("100.64.0.0/10"),  // RFC 6598 shared address space
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("fc00::/7"),       // RFC 4193 unique local
	netip.MustParsePrefix("::1/128"),        // loopback
}

const privateRanges = "RFC 1918 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16, " +
	"RFC 6598 100.64.0.0/10, IPv6 unique local fc00::/7, or loopback"

// notPrivateError is what CheckPrivateAddress returns.
type notPrivateError struct {
	addr netip.Addr
	what string // "public", "link-local", ...
}

func (e *notPrivateError) Error() string {
	return fmt.Sprintf("address %s is %s; private access needs a private address (%s)", e.addr, e.what, privateRanges)
}

func (e *notPrivateError) Is(target error) bool { return target == ErrNotPrivate }

// CheckPrivateAddress returns nil if private access may use addr: RFC 1918,
// RFC 6598 (100.64.0.0/10), IPv6 unique local (fc00::/7) and loopback
// addresses. An IPv4-mapped IPv6 address is judged as IPv4. Any other
// address gives an error matching ErrNotPrivate.
func CheckPrivateAddress(addr netip.Addr) error {
	if !addr.IsValid() {
		return errors.New("no address given; private access needs a private address")
	}
	a := normalizeAddr(addr)
	for _, p := range privatePrefixes {
		if p.Contains(a) {
			return nil
		}
	}
	what := "public"
	switch {
	case a.IsUnspecified():
		what = "unspecified (every interface, public ones included)"
	case a.IsLinkLocalUnicast():
		what = "link-local"
	case a.IsMulticast():
		what = "multicast"
	}
	return &notPrivateError{addr: addr, what: what}
}

// CheckListen checks a listen address ("host:port") for mode. Both modes
// need a well-formed address with a numeric port. Private mode also needs
// the host to be "localhost" or an IP address that CheckPrivateAddress
// accepts; an empty host, 0.0.0.0 and :: listen everywhere and are refused.
func CheckListen(mode Mode, hostport string) error {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", hostport, err)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || port == "" || n > 65535 {
		return fmt.Errorf("listen address %q: port %q is not a number from 0 to 65535", hostport, port)
	}
	switch mode {
	case ModePublic:
		return nil
	case ModePrivate:
	default:
		return fmt.Errorf("network mode %q is not %q or %q", mode, ModePublic, ModePrivate)
	}
	if host == "" {
		return fmt.Errorf("listen address %q: %w", hostport, &notPrivateError{addr: netip.IPv4Unspecified(), what: "unspecified (every interface, public ones included)"})
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("listen address %q: private access needs an IP address, not the host name %q", hostport, host)
	}
	if err := CheckPrivateAddress(addr); err != nil {
		return fmt.Errorf("listen address %q: %w", hostport, err)
	}
	return nil
}
