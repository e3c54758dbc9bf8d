package proxyproto

import (
	"encoding"
	"net/netip"
	"slices"
	"testing"
)

var (
	_ encoding.TextMarshaler   = Trusted{}
	_ encoding.TextUnmarshaler = (*Trusted)(nil)
)

func TestParseTrusted(t *testing.T) {
	tests := []struct {
		in   string
		want []string // prefixes; nil with wantErr
		err  bool
	}{
		{in: "", want: []string{}},
		{in: "   ", want: []string{}},
		{in: "10.0.0.0/8, 192.168.1.5/32", want: []string{"10.0.0.0/8", "192.168.1.5/32"}},
		{in: "192.168.1.5,2001:db8::/32 , fd00::1", want: []string{"192.168.1.5/32", "2001:db8::/32", "fd00::1/128"}},
		{in: "::ffff:10.0.0.0/104", want: []string{"10.0.0.0/8"}},
		{in: "::ffff:10.1.2.3", want: []string{"10.1.2.3/32"}},
		{in: "0.0.0.0/0,::/0", want: []string{"0.0.0.0/0", "::/0"}},
		{in: "10.1.0.0/8", err: true},
		{in: "10.0.0.0/33", err: true},
		{in: "10.0.0.0/8,", err: true},
		{in: ",10.0.0.0/8", err: true},
		{in: "10.0.0.0/8,,10.0.0.1", err: true},
		{in: "10.0.0.0/8 10.0.0.1", err: true},
		{in: "fe80::1%eth0", err: true},
		{in: "example.com", err: true},
		{in: "10.0.0.0/-1", err: true},
	}
	for _, tt := range tests {
		tr, err := ParseTrusted(tt.in)
		if tt.err {
			if err == nil {
				t.Errorf("ParseTrusted(%q) = %v; want an error", tt.in, tr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseTrusted(%q) error = %v; want nil", tt.in, err)
			continue
		}
		got := []string{}
		for _, p := range tr.Prefixes() {
			got = append(got, p.String())
		}
		if !slices.Equal(got, tt.want) || tr.Len() != len(tt.want) {
			t.Errorf("ParseTrusted(%q) = %q; want %q", tt.in, got, tt.want)
		}
		// String is ParseTrusted's format.
		again, err := ParseTrusted(tr.String())
		if err != nil || !slices.Equal(again.Prefixes(), tr.Prefixes()) {
			t.Errorf("ParseTrusted(%q.String() = %q) = %v, %v; want the same list", tt.in, tr.String(), again, err)
		}
	}
}

func TestTrustedContains(t *testing.T) {
	tr, err := ParseTrusted("10.0.0.0/8, 192.168.1.5/32, 2001:db8::/32")
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]bool{
		"10.0.0.1":           true,
		"10.255.255.255":     true,
		"11.0.0.1":           false,
		"192.168.1.5":        true,
		"192.168.1.6":        false,
		"::ffff:10.1.2.3":    true,
		"::ffff:192.168.1.5": true,
		"::ffff:192.168.1.6": false,
		"2001:db8::1":        true,
		"2001:db8::1%eth0":   true,
		"2001:db9::1":        false,
		"::a00:1":            false, // IPv4-compatible, not mapped
	}
	for s, want := range tests {
		if got := tr.Contains(netip.MustParseAddr(s)); got != want {
			t.Errorf("Contains(%s) = %v; want %v", s, got, want)
		}
	}
	if tr.Contains(netip.Addr{}) {
		t.Errorf("Contains(invalid) = true; want false")
	}
	if (Trusted{}).Contains(netip.MustParseAddr("10.0.0.1")) {
		t.Errorf("zero Trusted contains 10.0.0.1; want empty")
	}
}

func TestNewTrusted(t *testing.T) {
	tr, err := NewTrusted(netip.MustParsePrefix("10.1.2.3/8"), netip.MustParsePrefix("::ffff:192.168.0.0/112"))
	if err != nil {
		t.Fatal(err)
	}
	if got := tr.String(); got != "10.0.0.0/8, 192.168.0.0/16" {
		t.Errorf("NewTrusted(...).String() = %q; want %q", got, "10.0.0.0/8, 192.168.0.0/16")
	}
	if _, err := NewTrusted(netip.Prefix{}); err == nil {
		t.Errorf("NewTrusted(invalid) error = nil; want an error")
	}
}

func TestTrustedText(t *testing.T) {
	var tr Trusted
	if err := tr.UnmarshalText([]byte("10.0.0.0/8,fd00::/8")); err != nil {
		t.Fatal(err)
	}
	b, err := tr.MarshalText()
	if err != nil || string(b) != "10.0.0.0/8, fd00::/8" {
		t.Errorf("MarshalText() = %q, %v; want %q", b, err, "10.0.0.0/8, fd00::/8")
	}
	if err := tr.UnmarshalText([]byte("bogus")); err == nil {
		t.Errorf("UnmarshalText(bogus) error = nil; want an error")
	}
	if tr.Len() != 2 {
		t.Errorf("failed UnmarshalText changed the list to %v", tr)
	}
}
