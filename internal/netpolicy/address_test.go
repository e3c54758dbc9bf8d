package netpolicy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

var netipZero netip.Addr

func TestCheckPrivateAddress(t *testing.T) {
	tests := []struct {
		name    string
		addr    netip.Addr
		wantErr string // substring; "" means private
	}{
		{name: "10/8 first", addr: a("10.0.0.0")},
		{name: "10/8 last", addr: a("10.255.255.255")},
		{name: "below 10/8", addr: a("9.255.255.255"), wantErr: "address 9.255.255.255 is public; private access needs a private address"},
		{name: "above 10/8", addr: a("11.0.0.0"), wantErr: "is public"},
		{name: "172.16/12 first", addr: a("172.16.0.0")},
		{name: "172.16/12 last", addr: a("172.31.255.255")},
		{name: "172.15", addr: a("172.15.255.255"), wantErr: "is public"},
		{name: "172.32", addr: a("172.32.0.0"), wantErr: "is public"},
		{name: "192.168/16", addr: a("192.168.10.1")},
		{name: "192.169", addr: a("192.169.0.1"), wantErr: "is public"},
		{name: "RFC 6598 first", addr: a("100.64.0.0")},
		{name: "RFC 6598 last", addr: a("100.127.255.255")},
		{name: "below RFC 6598", addr: a("100.63.255.255"), wantErr: "is public"},
		{name: "above RFC 6598", addr: a("100.128.0.0"), wantErr: "is public"},
		{name: "loopback", addr: a("127.0.0.1")},
		{name: "loopback other", addr: a("127.1.2.3")},
		{name: "v6 loopback", addr: a("::1")},
		{name: "ULA fc", addr: a("fc00::1")},
		{name: "ULA fd", addr: a("fdff:ffff::1")},
		{name: "mapped private", addr: a("::ffff:10.1.2.3")},
		{name: "mapped public", addr: a("::ffff:8.8.8.8"), wantErr: "is public"},
		{name: "v6 public", addr: a("2001:db8::1"), wantErr: "address 2001:db8::1 is public"},
		{name: "fe00 not ULA", addr: a("fe00::1"), wantErr: "is public"},
		{name: "link-local", addr: a("169.254.1.1"), wantErr: "is link-local"},
		{name: "v6 link-local", addr: a("fe80::1%eth0"), wantErr: "is link-local"},
		{name: "unspecified", addr: a("0.0.0.0"), wantErr: "is unspecified"},
		{name: "v6 unspecified", addr: a("::"), wantErr: "is unspecified"},
		{name: "multicast", addr: a("224.0.0.1"), wantErr: "is multicast"},
		{name: "invalid", addr: netipZero, wantErr: "no address given"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPrivateAddress(tt.addr)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckPrivateAddress(%v) = %v; want nil", tt.addr, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("CheckPrivateAddress(%v) = %v; want an error containing %q", tt.addr, err, tt.wantErr)
			}
			if tt.addr.IsValid() && !errors.Is(err, ErrNotPrivate) {
				t.Errorf("errors.Is(CheckPrivateAddress(%v), ErrNotPrivate) = false; want true", tt.addr)
			}
		})
	}
}

func TestCheckListen(t *testing.T) {
	tests := []struct {
		name     string
		mode     Mode
		hostport string
		wantErr  string
	}{
		{name: "public any", mode: ModePublic, hostport: "0.0.0.0:5432"},
		{name: "public empty host", mode: ModePublic, hostport: ":5432"},
		{name: "public name", mode: ModePublic, hostport: "db.example.com:5432"},
		{name: "public bad port", mode: ModePublic, hostport: "0.0.0.0:pg", wantErr: `port "pg" is not a number`},
		{name: "public no port", mode: ModePublic, hostport: "0.0.0.0", wantErr: "missing port"},
		{name: "private 10", mode: ModePrivate, hostport: "10.0.0.4:5432"},
		{name: "private loopback", mode: ModePrivate, hostport: "127.0.0.1:5432"},
		{name: "private localhost", mode: ModePrivate, hostport: "localhost:5432"},
		{name: "private ULA", mode: ModePrivate, hostport: "[fd00::4]:5432"},
		{name: "private v6 loopback", mode: ModePrivate, hostport: "[::1]:5432"},
		{name: "private unspecified", mode: ModePrivate, hostport: "0.0.0.0:5432", wantErr: "0.0.0.0 is unspecified"},
		{name: "private v6 unspecified", mode: ModePrivate, hostport: "[::]:5432", wantErr: ":: is unspecified"},
		{name: "private empty host", mode: ModePrivate, hostport: ":5432", wantErr: "is unspecified"},
		{name: "private public", mode: ModePrivate, hostport: "203.0.113.4:5432",
			wantErr: `listen address "203.0.113.4:5432": address 203.0.113.4 is public; private access needs a private address`},
		{name: "private host name", mode: ModePrivate, hostport: "db.internal:5432", wantErr: "needs an IP address"},
		{name: "bad mode", mode: "vnet", hostport: "10.0.0.4:5432", wantErr: `network mode "vnet"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckListen(tt.mode, tt.hostport)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckListen(%q, %q) = %v; want nil", tt.mode, tt.hostport, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("CheckListen(%q, %q) = %v; want an error containing %q", tt.mode, tt.hostport, err, tt.wantErr)
			}
		})
	}
}
