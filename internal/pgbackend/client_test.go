package pgbackend

import (
	"crypto/tls"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestSetClient(t *testing.T) {
	id := ClientIdentity{Addr: netip.MustParseAddrPort("[fd77::2%eth0]:40001"), Method: ClientMethodToken,
		PrincipalObjectID: "0b5e 2c1a&x=y", Issuer: "https://login.example/t/v2.0?a=b",
		TokenExpiry: time.Unix(1893456000, 0)}
	id.SetTLS(&tls.ConnectionState{Version: tls.VersionTLS12, CipherSuite: tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384})
	p := map[string]string{}
	if err := SetClient(p, id); err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`^v=1&addr=fd77%3A%3A2&port=40001&tls=TLSv1\.2&cipher=ECDHE-ECDSA-AES256-GCM-SHA384&bits=256` +
		`&method=token&oid=0b5e%202c1a%26x%3Dy&iss=https%3A%2F%2Flogin\.example%2Ft%2Fv2\.0%3Fa%3Db&exp=1893456000&key=[0-9a-f]{64}$`)
	if !want.MatchString(p[ClientParam]) {
		t.Errorf("record = %q; want %s", p[ClientParam], want)
	}
	if k := bindKeyFrom(p); len(k) != bindKeyLen {
		t.Errorf("bindKeyFrom = %x; want the record's 32-byte key", k)
	}
	for _, bad := range []ClientIdentity{{Method: ClientMethodSCRAM}, {Addr: id.Addr, Method: "trust"},
		{Addr: netip.MustParseAddrPort("10.0.0.1:0"), Method: ClientMethodSCRAM},
		// A hand-over digest is a rebind's, never the startup record's.
		{Addr: id.Addr, Method: ClientMethodSCRAM, Expect: strings.Repeat("a", 64)}} {
		if err := SetClient(map[string]string{}, bad); err == nil {
			t.Errorf("SetClient(%+v) = nil; want an error", bad)
		}
	}
}

func TestSetTLSNames(t *testing.T) {
	for _, tt := range []struct {
		v, suite uint16
		ver, c   string
		bits     int
	}{
		{tls.VersionTLS13, tls.TLS_AES_128_GCM_SHA256, "TLSv1.3", "TLS_AES_128_GCM_SHA256", 128},
		{tls.VersionTLS13, tls.TLS_CHACHA20_POLY1305_SHA256, "TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256", 256},
		{tls.VersionTLS12, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", 128},
		{tls.VersionTLS12, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, "TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305", 256},
		{tls.VersionTLS11, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, "", "", 0},
	} {
		var id ClientIdentity
		id.SetTLS(&tls.ConnectionState{Version: tt.v, CipherSuite: tt.suite})
		if id.TLSVersion != tt.ver || id.Cipher != tt.c || id.Bits != tt.bits {
			t.Errorf("SetTLS(%x, %x) = %q %q %d; want %q %q %d", tt.v, tt.suite, id.TLSVersion, id.Cipher, id.Bits, tt.ver, tt.c, tt.bits)
		}
	}
}

// TestBindValueQuotes: BindValue stands between single quotes in the
// gateway's hand-over SELECT as it is, so nothing a client controls (a
// token's issuer or object ID) may put a quote or backslash in it.
func TestBindValueQuotes(t *testing.T) {
	b := &Backend{PID: 42, TxStatus: 'I', bindKey: make([]byte, bindKeyLen)}
	id := ClientIdentity{Addr: netip.MustParseAddrPort("10.77.0.9:5000"), Method: ClientMethodToken,
		PrincipalObjectID: `o'; DROP TABLE x; --\`, Issuer: `https://x/'\''\\`}
	v, err := b.BindValue(id)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^v=1&seq=1&pid=42&[A-Za-z0-9%&=._~-]+&mac=[0-9a-f]{64}$`).MatchString(v) {
		t.Errorf("BindValue = %q; want only unreserved characters, %%, & and =", v)
	}
	if v2, _ := b.BindValue(id); v2 == v {
		t.Errorf("two BindValues are the same (%q); the sequence number must grow", v)
	}
	if _, err := (&Backend{TxStatus: 'T', bindKey: b.bindKey}).BindValue(id); err != ErrNotBindable {
		t.Errorf("BindValue inside a transaction = %v; want ErrNotBindable", err)
	}
}

// TestBindValueReportExpect: report=1 and expect=DIGEST are encoded in the
// MAC'd rebind; a digest that is not 64 lowercase hex digits is refused
// (the guard refuses it too), so nothing else reaches the record.
func TestBindValueReportExpect(t *testing.T) {
	b := &Backend{PID: 4242, TxStatus: 'I', bindKey: make([]byte, bindKeyLen)}
	id := ClientIdentity{Addr: netip.MustParseAddrPort("10.77.0.9:5000"), Method: ClientMethodSCRAM, Report: true,
		Expect: strings.Repeat("0f", 32)}
	v, err := b.BindValue(id)
	if err != nil {
		t.Fatal(err)
	}
	if want := regexp.MustCompile(`^v=1&seq=1&pid=4242&addr=10\.77\.0\.9&port=5000&method=scram-sha-256&report=1&expect=(0f){32}&mac=[0-9a-f]{64}$`); !want.MatchString(v) {
		t.Errorf("BindValue = %q; want %s", v, want)
	}
	for _, bad := range []string{strings.Repeat("0F", 32), strings.Repeat("0", 63), strings.Repeat("0", 64) + "&x=1", strings.Repeat("g", 64)} {
		id.Expect = bad
		if _, err := b.BindValue(id); err == nil {
			t.Errorf("BindValue(expect %q) = nil error; want refused", bad)
		}
	}
}
