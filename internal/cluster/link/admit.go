package link

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/cluster/patroni"
)

// Startup packet bounds, as PostgreSQL's own (src/include/libpq/pqcomm.h
// MAX_STARTUP_PACKET_LENGTH) and pgproto3's: against malicious peers.
const (
	minStartupLen = 8
	maxStartupLen = 10000
	// maxNegotiations bounds SSLRequest/GSSENCRequest answers before the
	// startup message: libpq sends at most one of each.
	maxNegotiations = 2
)

// Startup protocol codes (PostgreSQL's pqcomm.h).
const (
	codeCancel = 80877102
	codeSSL    = 80877103
	codeGSSEnc = 80877104
)

// ErrProtocol is a startup packet that is not PostgreSQL's.
var ErrProtocol = errors.New("link: protocol error in the startup packet")

// Refusal is a startup message the link does not admit; Message goes to the
// peer in an ErrorResponse (28000). It names no secret: at most the role.
// Detail is for the node's own log only.
type Refusal struct{ Message, Detail string }

func (r *Refusal) Error() string {
	if r.Detail != "" {
		return "link: refused: " + r.Message + " (" + r.Detail + ")"
	}
	return "link: refused: " + r.Message
}

// readStartup reads one length-prefixed startup packet without reading a
// byte past it (what follows goes to PostgreSQL untouched).
func readStartup(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < minStartupLen || n > maxStartupLen {
		return nil, fmt.Errorf("%w: length %d", ErrProtocol, n)
	}
	buf := make([]byte, n)
	copy(buf, hdr[:])
	if _, err := io.ReadFull(r, buf[4:]); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	return buf, nil
}

// negotiate reads startup packets from rw until a StartupMessage, answering
// 'N' to SSLRequest and GSSENCRequest: the link is already TLS 1.3, and a
// second layer would only hide the startup message from admission. It
// returns the raw packet and its decoded form.
func negotiate(rw io.ReadWriter) ([]byte, *pgproto3.StartupMessage, error) {
	for i := 0; ; i++ {
		pkt, err := readStartup(rw)
		if err != nil {
			return nil, nil, err
		}
		switch code := binary.BigEndian.Uint32(pkt[4:8]); code {
		case codeSSL, codeGSSEnc:
			if len(pkt) != 8 || i >= maxNegotiations {
				return nil, nil, fmt.Errorf("%w: negotiation", ErrProtocol)
			}
			if _, err := rw.Write([]byte{'N'}); err != nil {
				return nil, nil, err
			}
		case codeCancel:
			// Nothing Patroni runs between nodes cancels a query; a
			// cancel key would let a peer end other sessions.
			return nil, nil, &Refusal{Message: "cancel requests are not relayed over the node link"}
		default:
			m, err := decodeStartup(pkt[4:])
			if err != nil {
				return nil, nil, err
			}
			return pkt, m, nil
		}
	}
}

// decodeStartup reads a StartupMessage body (after the length) as
// PostgreSQL 15's ProcessStartupPacket does: name/value pairs up to an
// empty name, which must be the packet's last byte. Unlike pgproto3's
// StartupMessage, which keeps a name's last value, it refuses a packet that
// names a parameter twice (also in another letter case): PostgreSQL reads
// every pair, and "replication=database" then "replication=true" leaves a
// database walsender where the last value alone says physical.
func decodeStartup(body []byte) (*pgproto3.StartupMessage, error) {
	if len(body) < 5 {
		return nil, fmt.Errorf("%w: too short", ErrProtocol)
	}
	m := &pgproto3.StartupMessage{ProtocolVersion: binary.BigEndian.Uint32(body), Parameters: map[string]string{}}
	seen := map[string]bool{}
	rest := body[4:]
	for {
		name, after, ok := bytes.Cut(rest, []byte{0})
		if !ok {
			return nil, fmt.Errorf("%w: unterminated parameter name", ErrProtocol)
		}
		if len(name) == 0 {
			if len(after) != 0 {
				return nil, fmt.Errorf("%w: expected terminator as last byte", ErrProtocol)
			}
			return m, nil
		}
		value, after2, ok := bytes.Cut(after, []byte{0})
		if !ok {
			return nil, fmt.Errorf("%w: unterminated value of %q", ErrProtocol, name)
		}
		key := strings.ToLower(string(name))
		if seen[key] {
			return nil, &Refusal{Message: fmt.Sprintf("startup parameter %q is given twice", name)}
		}
		seen[key] = true
		m.Parameters[string(name)] = string(value)
		rest = after2
	}
}

// allowedParams are the startup parameters libpq (15) sends for what
// Patroni runs between nodes: walreceiver, pg_basebackup, pg_rewind and
// Patroni's own psycopg connections, with libpq's environment GUCs.
var allowedParams = map[string]bool{
	"user": true, "database": true, "replication": true, "options": true,
	"application_name": true, "fallback_application_name": true, "client_encoding": true,
	"datestyle": true, "timezone": true, "geqo": true,
}

// exactParams are the startup names PostgreSQL reads itself, compared
// case-sensitively (postmaster.c ProcessStartupPacket); every other name is
// a setting, whose name is case-insensitive.
var exactParams = map[string]bool{"user": true, "database": true, "options": true, "replication": true}

// optionsRE is what Patroni 3.0.2's connections put into options and
// PGOPTIONS: statement timeouts, and search_path pinned to pg_catalog (its
// checks of the leader before a rewind send "-c statement_timeout=2000
// -c search_path=pg_catalog"). Anything else (-c role=...,
// -c session_authorization=...) is refused rather than passed on.
var optionsRE = regexp.MustCompile(`^(\s*-c\s*(statement_timeout=[0-9]+(ms|s)?|search_path=pg_catalog))*\s*$`)

// Admit decides a startup message: only the replication role, for a
// physical walsender, and the rewind role, for a plain session on database
// (pg_rewind's and Patroni's checks), get through. pg_hba.conf on the socket still asks both for SCRAM.
func Admit(m *pgproto3.StartupMessage, database string) error {
	if m.ProtocolVersion != pgproto3.ProtocolVersion30 {
		return &Refusal{Message: "unsupported protocol version"}
	}
	seen := make(map[string]bool, len(m.Parameters))
	for k := range m.Parameters {
		l := strings.ToLower(k)
		if !allowedParams[l] {
			return &Refusal{Message: fmt.Sprintf("startup parameter %q is not allowed over the node link", k)}
		}
		// PostgreSQL compares these four names exactly; another case
		// would be read as an unknown setting, not checked here as the
		// parameter it looks like.
		if exactParams[l] && k != l {
			return &Refusal{Message: fmt.Sprintf("startup parameter %q is not allowed over the node link", k)}
		}
		if seen[l] {
			return &Refusal{Message: fmt.Sprintf("startup parameter %q is given twice", k)}
		}
		seen[l] = true
	}
	if !optionsRE.MatchString(m.Parameters["options"]) {
		return &Refusal{Message: "startup options are not allowed over the node link", Detail: fmt.Sprintf("options %q", m.Parameters["options"])}
	}
	user, db := m.Parameters["user"], m.Parameters["database"]
	repl, hasRepl := m.Parameters["replication"]
	if db == "" {
		db = user // PostgreSQL's default
	}
	switch user {
	case patroni.ReplicationRole:
		// Physical replication only: PostgreSQL reads "replication" with
		// parse_bool, and "database" (case-sensitively) starts a database
		// walsender, which runs SQL. Patroni 3.0.2 opens only replication=1
		// between nodes (get_replication_connection_cursor), and the
		// walreceiver and pg_basebackup are physical.
		if on, ok := parseBool(repl); hasRepl && ok && on {
			return nil // the walsender ignores the database
		}
		return &Refusal{Message: "role " + patroni.ReplicationRole + " may only start a physical walsender over the node link"}
	case patroni.RewindRole:
		// pg_rewind and Patroni's checks send no "replication" at all.
		if !hasRepl && db == database {
			return nil
		}
		return &Refusal{Message: "role " + patroni.RewindRole + " may only open a session on database " + database + " over the node link"}
	}
	return &Refusal{Message: "only the replication and rewind roles are admitted over the node link"}
}

// parseBool is PostgreSQL 15's parse_bool (src/backend/utils/adt/bool.c,
// parse_bool_with_len): case-insensitive, any prefix of true, false, yes
// and no, at least two letters of on and off, 1 and 0; no whitespace.
func parseBool(v string) (val, ok bool) {
	l := strings.ToLower(v)
	prefixOf := func(word string, min int) bool {
		return len(l) >= min && len(l) <= len(word) && word[:len(l)] == l
	}
	switch {
	case l == "":
		return false, false
	case prefixOf("true", 1):
		return true, true
	case prefixOf("false", 1):
		return false, true
	case prefixOf("yes", 1):
		return true, true
	case prefixOf("no", 1):
		return false, true
	case prefixOf("on", 2):
		return true, true
	case prefixOf("off", 2):
		return false, true
	case l == "1":
		return true, true
	case l == "0":
		return false, true
	}
	return false, false
}

// walsenderTools are the application names of the tools that open a
// walsender between nodes besides the walreceiver (libpq's
// fallback_application_name of each); no member may be named so
// (ValidNodeName has no underscore).
var walsenderTools = map[string]bool{"pg_basebackup": true, "pg_rewind": true}

// AdmitPeer binds an admitted walsender to the peer it comes from:
// Patroni's synchronous_standby_names names members by application_name,
// so a peer's walsender under another member's name could stand in as the
// synchronous standby and acknowledge commits that member never got.
// Patroni 3.0.2 sets primary_conninfo's application_name to the member's
// own name (postgresql/config.py, primary_conninfo_params), which is its
// node name (the link's certificate name); its own replication checks
// (get_replication_connection_cursor) send none; pg_basebackup sends its
// fallback name. Anything else is refused.
func AdmitPeer(m *pgproto3.StartupMessage, peer string) error {
	if m.Parameters["user"] != patroni.ReplicationRole {
		return nil
	}
	for k, v := range m.Parameters {
		// A setting's name is case-insensitive; Admit refused a name
		// given twice in any case.
		if strings.ToLower(k) != "application_name" {
			continue
		}
		if v != peer && !walsenderTools[v] {
			return &Refusal{Message: "a walsender's application_name must be the peer's own node name", Detail: fmt.Sprintf("peer %s, application_name %q", peer, v)}
		}
	}
	return nil
}

// refusal is the ErrorResponse a refused peer gets.
func refusal(msg string) []byte {
	b, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28000", Message: msg}).Encode(nil)
	return b
}
