package nft

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func rng(from, to string) Range {
	return Range{From: netip.MustParseAddr(from), To: netip.MustParseAddr(to)}
}

func TestPrefixRange(t *testing.T) {
	tests := map[string]string{
		"10.0.0.0/8":         "10.0.0.0-10.255.255.255",
		"10.1.2.3/24":        "10.1.2.0-10.1.2.255",
		"192.168.1.5/32":     "192.168.1.5",
		"0.0.0.0/0":          "0.0.0.0-255.255.255.255",
		"fd77::/64":          "fd77::-fd77::ffff:ffff:ffff:ffff",
		"2001:db8::1/128":    "2001:db8::1",
		"::/0":               "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
		"2001:db8:0:80::/57": "2001:db8:0:80::-2001:db8:0:ff:ffff:ffff:ffff:ffff",
	}
	for in, want := range tests {
		if got := PrefixRange(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("PrefixRange(%s) = %s; want %s", in, got, want)
		}
	}
	if got := AddrRange(netip.MustParseAddr("10.0.0.1")).String(); got != "10.0.0.1" {
		t.Errorf("AddrRange(10.0.0.1) = %s", got)
	}
}

// fmtIntervals shows intervals as "from-end" pairs, end being exclusive
// ("from-" when the range runs to the last address).
func fmtIntervals(iv []interval) string {
	s := make([]string, len(iv))
	for i, v := range iv {
		end := ""
		if v.end.IsValid() {
			end = v.end.String()
		}
		s[i] = v.from.String() + "-" + end
	}
	return strings.Join(s, " ")
}

func TestRulesCheck(t *testing.T) {
	tests := []struct {
		name   string
		rules  Rules
		v4, v6 string // formatted intervals
		err    string // substring of the error; "" for none
	}{
		{name: "empty", rules: Rules{Port: 5432}},
		{name: "single addresses",
			rules: Rules{Port: 5432, AllowV4: []Range{rng("10.0.0.2", "10.0.0.2")}, AllowV6: []Range{rng("fd77::2", "fd77::2")}},
			v4:    "10.0.0.2-10.0.0.3", v6: "fd77::2-fd77::3"},
		{name: "sorted and merged",
			rules: Rules{Port: 1, AllowV4: []Range{
				rng("10.0.0.20", "10.0.0.30"),
				rng("10.0.0.1", "10.0.0.5"),
				rng("10.0.0.6", "10.0.0.9"),   // adjacent
				rng("10.0.0.25", "10.0.0.40"), // overlapping
				rng("10.0.0.21", "10.0.0.22"), // contained
				rng("10.0.1.0", "10.0.1.0"),
			}},
			v4: "10.0.0.1-10.0.0.10 10.0.0.20-10.0.0.41 10.0.1.0-10.0.1.1"},
		{name: "to the last address",
			rules: Rules{Port: 1,
				AllowV4: []Range{rng("255.255.255.0", "255.255.255.255"), rng("255.255.255.255", "255.255.255.255"), rng("1.0.0.0", "1.0.0.0")},
				AllowV6: []Range{PrefixRange(netip.MustParsePrefix("::/0"))}},
			v4: "1.0.0.0-1.0.0.1 255.255.255.0-", v6: "::-"},
		{name: "mapped v4 unmapped",
			rules: Rules{Port: 1, AllowV4: []Range{rng("::ffff:10.0.0.1", "10.0.0.2")}},
			v4:    "10.0.0.1-10.0.0.3"},
		{name: "port 0", rules: Rules{}, err: "port 0"},
		{name: "v6 in v4", rules: Rules{Port: 1, AllowV4: []Range{rng("fd77::1", "fd77::1")}}, err: "AllowV4"},
		{name: "v4 in v6", rules: Rules{Port: 1, AllowV6: []Range{rng("10.0.0.1", "10.0.0.1")}}, err: "AllowV6"},
		{name: "mapped in v6", rules: Rules{Port: 1, AllowV6: []Range{rng("::ffff:10.0.0.1", "::ffff:10.0.0.1")}}, err: "AllowV6"},
		{name: "mixed families", rules: Rules{Port: 1, AllowV4: []Range{rng("10.0.0.1", "fd77::1")}}, err: "not of this family"},
		{name: "reversed", rules: Rules{Port: 1, AllowV4: []Range{rng("10.0.0.2", "10.0.0.1")}}, err: "ends before"},
		{name: "invalid", rules: Rules{Port: 1, AllowV6: []Range{{}}}, err: "invalid address"},
		{name: "zone", rules: Rules{Port: 1, AllowV6: []Range{rng("fe80::1%eth0", "fe80::1%eth0")}}, err: "zone"},
		{name: "too many", rules: Rules{Port: 1, AllowV4: make([]Range, MaxRanges+1)}, err: "exceed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v4, v6, err := tt.rules.check()
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("check() error = %v; want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("check() error = %v; want nil", err)
			}
			if got := fmtIntervals(v4); got != tt.v4 {
				t.Errorf("check() v4 = %q; want %q", got, tt.v4)
			}
			if got := fmtIntervals(v6); got != tt.v6 {
				t.Errorf("check() v6 = %q; want %q", got, tt.v6)
			}
		})
	}
}

func TestCheckTable(t *testing.T) {
	for name, ok := range map[string]bool{
		"pgshield":              true,
		"pgshield_5432":         true,
		"pgshield-main":         true,
		"P":                     true,
		strings.Repeat("a", 64): true,
		strings.Repeat("a", 65): false,
		"":                      false,
		"_pgshield":             false,
		"1table":                false,
		"pg shield":             false,
		"pg.shield":             false,
		"pg\x00shield":          false,
		"pgshield;flush":        false,
	} {
		if err := checkTable(name); (err == nil) != ok {
			t.Errorf("checkTable(%q) error = %v; want ok = %v", name, err, ok)
		}
	}
}

func ExamplePrefixRange() {
	fmt.Println(PrefixRange(netip.MustParsePrefix("192.168.1.0/24")))
	// Output: 192.168.1.0-192.168.1.255
}
