package pgbackend

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// ClientParam is the startup parameter in which the gateway tells
// pgshield_guard who the real client is. The guard believes it only from a
// peer with uid pgshield_guard.gateway_uid (0: the gateway, root), takes it
// out of the startup options before PostgreSQL applies them (no setting
// ever holds it) and ends any other connection that carries it. The
// gateway refuses it, and anything under the pgshield prefixes, from
// clients.
const ClientParam = "pgshield_guard.client"

// bindSetting is what BindClient sets to rebind a backend to a new client.
const bindSetting = "pgshield_guard.bind_client"

// bindKeyLen is the size of the per-backend HMAC key, in bytes.
const bindKeyLen = 32

// Login methods as pgshield_guard shows them (pgshield.sessions.method).
const (
	ClientMethodSCRAM     = "scram-sha-256"
	ClientMethodSCRAMPlus = "scram-sha-256-plus"
	ClientMethodToken     = "token"
	ClientMethodPassword  = "password"
)

// ClientIdentity is what PostgreSQL shows about a gateway session: the
// client's address (the one a trusted PROXY header carried, if any), its
// TLS session, and how it logged in.
type ClientIdentity struct {
	Addr netip.AddrPort
	// TLSVersion ("TLSv1.2", "TLSv1.3"; "" without TLS), Cipher (OpenSSL's
	// name, as PostgreSQL reports it) and Bits, as pg_stat_ssl shows them.
	TLSVersion string
	Cipher     string
	Bits       int
	// Method is one of the ClientMethod constants.
	Method string
	// PrincipalObjectID, Issuer and TokenExpiry are set for token logins.
	PrincipalObjectID string
	Issuer            string
	TokenExpiry       time.Time

	// Report asks pgshield_guard to report session state the gateway must
	// clear before the backend's next client (a ParameterStatus
	// DirtyParam = "on" at the end of a transaction that leaves some), for
	// transaction pooling's hand-over without a round trip.
	Report bool
	// Expect, in a rebind only, makes it a pipelined hand-over: the guard
	// runs the hand-over check itself and ends the backend (FATAL) unless
	// the session is clean, its role may still open it, and its settings
	// digest is Expect (64 lowercase hex digits); nothing the gateway
	// sent behind the rebind then runs.
	Expect string
}

// DirtyParam is the ParameterStatus by which pgshield_guard reports a
// session that needs DISCARD ALL before another client (Report).
const DirtyParam = "pgshield_guard.dirty"

// SetTLS fills the TLS fields from a connection state, with the names
// OpenSSL (and so a PostgreSQL that terminated TLS itself) would give.
func (id *ClientIdentity) SetTLS(cs *tls.ConnectionState) {
	id.TLSVersion, id.Cipher, id.Bits = "", "", 0
	if cs == nil {
		return
	}
	switch cs.Version {
	case tls.VersionTLS12:
		id.TLSVersion = "TLSv1.2"
	case tls.VersionTLS13:
		id.TLSVersion = "TLSv1.3"
	default:
		return // pgshield negotiates nothing else; pgshield_guard knows nothing else
	}
	if s, ok := opensslSuites[cs.CipherSuite]; ok {
		id.Cipher, id.Bits = s.name, s.bits
		return
	}
	id.Cipher, id.Bits = tls.CipherSuiteName(cs.CipherSuite), 256
	if strings.Contains(id.Cipher, "128") {
		id.Bits = 128
	}
}

var opensslSuites = map[uint16]struct {
	name string
	bits int
}{
	tls.TLS_AES_128_GCM_SHA256:                        {"TLS_AES_128_GCM_SHA256", 128},
	tls.TLS_AES_256_GCM_SHA384:                        {"TLS_AES_256_GCM_SHA384", 256},
	tls.TLS_CHACHA20_POLY1305_SHA256:                  {"TLS_CHACHA20_POLY1305_SHA256", 256},
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256:         {"ECDHE-RSA-AES128-GCM-SHA256", 128},
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:         {"ECDHE-RSA-AES256-GCM-SHA384", 256},
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256:       {"ECDHE-ECDSA-AES128-GCM-SHA256", 128},
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384:       {"ECDHE-ECDSA-AES256-GCM-SHA384", 256},
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:   {"ECDHE-RSA-CHACHA20-POLY1305", 256},
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: {"ECDHE-ECDSA-CHACHA20-POLY1305", 256},
}

// fields encodes id as pgshield_guard parses it: key=value pairs joined by
// '&', values percent-encoded.
func (id *ClientIdentity) fields() (string, error) {
	if !id.Addr.IsValid() || id.Addr.Port() == 0 {
		return "", errors.New("client identity without an address and port")
	}
	switch id.Method {
	case ClientMethodSCRAM, ClientMethodSCRAMPlus, ClientMethodToken, ClientMethodPassword:
	default:
		return "", fmt.Errorf("unknown login method %q", id.Method)
	}
	var b strings.Builder
	add := func(k, v string) {
		b.WriteByte('&')
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(pctEncode(v))
	}
	// No zone: PostgreSQL never shows one for a client address.
	add("addr", id.Addr.Addr().WithZone("").String())
	add("port", strconv.Itoa(int(id.Addr.Port())))
	if id.TLSVersion != "" {
		add("tls", id.TLSVersion)
		add("cipher", id.Cipher)
		add("bits", strconv.Itoa(id.Bits))
	}
	add("method", id.Method)
	if id.PrincipalObjectID != "" {
		add("oid", id.PrincipalObjectID)
	}
	if id.Issuer != "" {
		add("iss", id.Issuer)
	}
	if !id.TokenExpiry.IsZero() && id.TokenExpiry.Unix() > 0 {
		add("exp", strconv.FormatInt(id.TokenExpiry.Unix(), 10))
	}
	if id.Report {
		add("report", "1")
	}
	return b.String(), nil
}

// pctEncode escapes every byte but the unreserved ones (RFC 3986), which
// pgshield_guard's decoder reads back; unlike url.QueryEscape it never
// writes '+' for a space.
func pctEncode(s string) string {
	const hexdig = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexdig[c>>4])
		b.WriteByte(hexdig[c&15])
	}
	return b.String()
}

// SetClient puts the gateway's record of id into the startup parameters,
// with a fresh random key for this backend alone (Connect keeps it for
// BindClient; it is never logged and dies with the connection).
func SetClient(params map[string]string, id ClientIdentity) error {
	if id.Expect != "" {
		return errors.New("a hand-over digest belongs in a rebind, not in the startup record")
	}
	f, err := id.fields()
	if err != nil {
		return err
	}
	key := make([]byte, bindKeyLen)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	params[ClientParam] = "v=1" + f + "&key=" + hex.EncodeToString(key)
	return nil
}

// bindKeyFrom recovers the key SetClient put in the record (its last field).
func bindKeyFrom(params map[string]string) []byte {
	rec, ok := params[ClientParam]
	if !ok {
		return nil
	}
	i := strings.LastIndex(rec, "&key=")
	if i < 0 {
		return nil
	}
	key, err := hex.DecodeString(rec[i+len("&key="):])
	if err != nil || len(key) != bindKeyLen {
		return nil
	}
	return key
}

// ErrNotBindable means the backend was not opened with SetClient, or is
// not idle.
var ErrNotBindable = errors.New("backend cannot be rebound to a new client")

// BindQuery is the statement BindClient sends, for a caller that
// pipelines it with others on an idle backend (transaction pooling) and
// reads its answer itself: any ErrorResponse means the backend is unusable.
// Each call uses the next sequence number.
func (b *Backend) BindQuery(id ClientIdentity) (*pgproto3.Query, error) {
	v, err := b.BindValue(id)
	if err != nil {
		return nil, err
	}
	return &pgproto3.Query{String: "SET " + bindSetting + " = '" + v + "'"}, nil
}

// BindValue is BindQuery's value alone, for a caller that sets it in a
// statement of its own (pg_catalog.set_config(BindSetting, value, false)).
// It holds no quote or backslash (percent-encoded), so it can stand between
// single quotes as it is.
func (b *Backend) BindValue(id ClientIdentity) (string, error) {
	e, err := id.Encode()
	if err != nil {
		return "", err
	}
	return b.BindEncoded(e, id.Expect)
}

// EncodedIdentity is a ClientIdentity encoded once (Encode), for a client
// whose backends are rebound to it again and again (transaction pooling).
type EncodedIdentity struct{ fields string }

// Encode encodes id for BindEncoded; id.Expect is not part of it.
func (id *ClientIdentity) Encode() (EncodedIdentity, error) {
	f, err := id.fields()
	return EncodedIdentity{fields: f}, err
}

// BindEncoded is BindValue for an encoded identity, with expect as
// ClientIdentity.Expect ("" for none).
func (b *Backend) BindEncoded(e EncodedIdentity, expect string) (string, error) {
	if b.bindKey == nil || b.TxStatus != 'I' {
		return "", ErrNotBindable
	}
	if e.fields == "" {
		return "", errors.New("client identity not encoded")
	}
	if expect != "" && (len(expect) != 64 || strings.Trim(expect, "0123456789abcdef") != "") {
		return "", errors.New("hand-over digest is not 64 lowercase hex digits")
	}
	b.bindSeq++
	payload := make([]byte, 0, 64+len(e.fields)+len(expect)+2*sha256.Size+16)
	payload = append(payload, "v=1&seq="...)
	payload = strconv.AppendUint(payload, b.bindSeq, 10)
	payload = append(payload, "&pid="...)
	payload = strconv.AppendUint(payload, uint64(b.PID), 10)
	payload = append(payload, e.fields...)
	if expect != "" {
		payload = append(payload, "&expect="...)
		payload = append(payload, expect...)
	}
	if b.mac == nil {
		b.mac = hmac.New(sha256.New, b.bindKey)
	}
	b.mac.Reset()
	b.mac.Write(payload)
	var sum [sha256.Size]byte
	payload = append(payload, "&mac="...)
	payload = hex.AppendEncode(payload, b.mac.Sum(sum[:0]))
	return string(payload), nil
}

// BindSetting is the setting BindValue is for.
const BindSetting = bindSetting

// BindClient rebinds an idle backend opened with SetClient to a new client
// session (a pooled backend handed to its next client): one SET, which
// pgshield_guard accepts only with an HMAC-SHA-256 under this backend's key
// over a sequence number that must grow and the new identity. The
// statement is visible in pg_stat_activity to the role's other sessions;
// it can be neither replayed (the number) nor forged or used on another
// backend (the key). Not safe for concurrent use with the relay.
func (b *Backend) BindClient(ctx context.Context, id ClientIdentity) error {
	q, err := b.BindQuery(id)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = b.Conn.SetDeadline(dl)
	} else {
		_ = b.Conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	defer b.Conn.SetDeadline(time.Time{})
	buf, err := q.Encode(nil)
	if err != nil {
		return err
	}
	if _, err := b.Conn.Write(buf); err != nil {
		return fmt.Errorf("rebinding the backend: %w", err)
	}
	var refused error
	for i := 0; i < 100; i++ {
		typ, body, err := readBackendMessage(b.Conn)
		if err != nil {
			return fmt.Errorf("rebinding the backend: %w", err)
		}
		switch typ {
		case 'E':
			m := &pgproto3.ErrorResponse{}
			if err := m.Decode(body); err != nil {
				return err
			}
			refused = &BackendError{Msg: m}
		case 'Z':
			if len(body) != 1 {
				return errors.New("invalid ReadyForQuery from PostgreSQL")
			}
			b.TxStatus = body[0]
			return refused
		}
		// CommandComplete, NoticeResponse, ParameterStatus: nothing to keep.
	}
	return errors.New("PostgreSQL sent too many messages for one SET")
}
