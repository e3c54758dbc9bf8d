// Command gwload drives two rows of bench/gateway.sh against one PostgreSQL
// endpoint (direct, PgBouncer or pgshield) over TCP + TLS with a SCRAM
// password. It prints "key value" lines on stdout.
//
//	gwload -addr A -user U -db D -mode latency [-duration 10s]
//	gwload -addr A -user U -db D -mode idle -n 10000 -pid PID
//
// The password comes from $PGPASSWORD, never from argv. TLS is as
// sslmode=require (encrypted, the certificate not verified), as the
// pgbench rows of the same script.
//
// Modes:
//
//	latency  one session; after -warmup queries, SELECT 1 over the simple
//	         protocol, one at a time for -duration (at most -max queries);
//	         prints queries, median_us, p90_us, p99_us, p999_us, mean_us
//	idle     opens -n sessions (-conc logins at a time) and holds them idle;
//	         after -hold, one SELECT 1 on each proves it is alive. Prints
//	         held, failed, first_error, login_s, and the VmRSS of process
//	         -pid before the first login and while all are held
//	         (rss_before_kib, rss_after_kib, rss_per_conn_kib).
//
// The protocol is spoken with pgx's pgproto3 and the SCRAM exchange with
// xdg-go/scram, whose client caches the salted password: 10,000 logins
// then cost 10,000 TLS handshakes and SCRAM exchanges on the server's side
// but not 10,000 PBKDF2 derivations in the driver (pgconn derives anew for
// every connection, which would make the driver the bottleneck).
package main

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

var (
	addr     = flag.String("addr", "", "host:port of the endpoint")
	user     = flag.String("user", "", "role")
	db       = flag.String("db", "postgres", "database")
	mode     = flag.String("mode", "", "latency or idle")
	duration = flag.Duration("duration", 10*time.Second, "how long latency is measured")
	warmup   = flag.Int("warmup", 2000, "queries before latency is measured")
	maxQ     = flag.Int("max", 2_000_000, "most queries measured (latency)")
	n        = flag.Int("n", 10000, "sessions to hold (idle)")
	conc     = flag.Int("conc", 16, "logins in flight at a time (idle)")
	hold     = flag.Duration("hold", 5*time.Second, "how long the sessions sit idle before RSS is read (idle)")
	pid      = flag.Int("pid", 0, "the process whose VmRSS is read (idle)")
	maxFail  = flag.Int("max-failures", 50, "stop opening sessions after this many failed logins (idle)")
	ready    = flag.String("ready-file", "", "file created when every session is open, at the start of the hold (idle)")
)

func main() {
	flag.Parse()
	pw, ok := os.LookupEnv("PGPASSWORD")
	if !ok || *addr == "" || *user == "" {
		fail(errors.New("need -addr, -user and $PGPASSWORD"))
	}
	client, err := scram.SHA256.NewClient("", pw, "") // PostgreSQL takes the user from the startup packet
	if err != nil {
		fail(err)
	}
	switch *mode {
	case "latency":
		err = latency(client)
	case "idle":
		err = idle(client)
	default:
		err = fmt.Errorf("unknown -mode %q", *mode)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gwload:", err)
	os.Exit(1)
}

// session is one logged-in connection.
type session struct {
	conn net.Conn
	fe   *pgproto3.Frontend
}

// connect opens a session: SSLRequest, TLS, startup, SCRAM-SHA-256 (no
// channel binding, as pgbench with sslmode=require), up to ReadyForQuery;
// the whole login within 60 s.
func connect(client *scram.Client) (*session, error) {
	c, err := net.DialTimeout("tcp", *addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	s, err := login(c, client)
	if err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

func login(c net.Conn, client *scram.Client) (*session, error) {
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:], 8)
	binary.BigEndian.PutUint32(req[4:], 80877103) // SSLRequest
	if _, err := c.Write(req[:]); err != nil {
		return nil, err
	}
	var answer [1]byte
	if _, err := io.ReadFull(c, answer[:]); err != nil {
		return nil, err
	}
	if answer[0] != 'S' {
		return nil, fmt.Errorf("the server refused TLS (%q)", answer[0])
	}
	// sslmode=require: encrypted, the certificate not verified.
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // as sslmode=require
	fe := pgproto3.NewFrontend(tc, tc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": *user, "database": *db, "application_name": "gwload"}})
	if err := fe.Flush(); err != nil {
		return nil, err
	}
	var conv *scram.ClientConversation
	for i := 0; i < 100; i++ { // a login is a few dozen messages
		msg, err := fe.Receive()
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationSASL:
			if !slices.Contains(m.AuthMechanisms, "SCRAM-SHA-256") {
				return nil, fmt.Errorf("no SCRAM-SHA-256 among %v", m.AuthMechanisms)
			}
			conv = client.NewConversation()
			first, err := conv.Step("")
			if err != nil {
				return nil, err
			}
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(first)})
		case *pgproto3.AuthenticationSASLContinue:
			if conv == nil {
				return nil, errors.New("SASLContinue before SASL")
			}
			final, err := conv.Step(string(m.Data))
			if err != nil {
				return nil, err
			}
			fe.Send(&pgproto3.SASLResponse{Data: []byte(final)})
		case *pgproto3.AuthenticationSASLFinal:
			if conv == nil {
				return nil, errors.New("SASLFinal before SASL")
			}
			if _, err := conv.Step(string(m.Data)); err != nil {
				return nil, fmt.Errorf("the server's SCRAM signature: %w", err)
			}
			continue
		case *pgproto3.ErrorResponse:
			return nil, fmt.Errorf("%s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			_ = tc.SetDeadline(time.Time{})
			return &session{conn: tc, fe: fe}, nil
		default:
			continue // AuthenticationOk, ParameterStatus, BackendKeyData, notices
		}
		if err := fe.Flush(); err != nil {
			return nil, err
		}
	}
	return nil, errors.New("no ReadyForQuery after 100 messages")
}

// query runs SELECT 1 over the simple protocol and reads up to
// ReadyForQuery.
func (s *session) query() error {
	s.fe.Send(&pgproto3.Query{String: "SELECT 1"})
	if err := s.fe.Flush(); err != nil {
		return err
	}
	var qerr error
	for i := 0; i < 20; i++ { // RowDescription, DataRow, CommandComplete, ReadyForQuery
		msg, err := s.fe.Receive()
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			qerr = fmt.Errorf("%s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return qerr
		}
	}
	return errors.New("no ReadyForQuery after 20 messages")
}

func (s *session) close() {
	s.fe.Send(&pgproto3.Terminate{})
	_ = s.fe.Flush()
	s.conn.Close()
}

func latency(client *scram.Client) error {
	s, err := connect(client)
	if err != nil {
		return err
	}
	defer s.close()
	for i := 0; i < *warmup; i++ {
		if err := s.query(); err != nil {
			return err
		}
	}
	ds := make([]time.Duration, 0, 1<<16)
	end := time.Now().Add(*duration)
	for len(ds) < *maxQ {
		t0 := time.Now()
		if err := s.query(); err != nil {
			return err
		}
		t1 := time.Now()
		ds = append(ds, t1.Sub(t0))
		if t1.After(end) {
			break
		}
	}
	slices.Sort(ds)
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	q := func(p float64) float64 { return us(ds[min(len(ds)-1, int(p*float64(len(ds))))]) }
	fmt.Printf("queries %d\nmedian_us %.1f\np90_us %.1f\np99_us %.1f\np999_us %.1f\nmean_us %.1f\n",
		len(ds), q(0.5), q(0.9), q(0.99), q(0.999), us(sum/time.Duration(len(ds))))
	return nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func idle(client *scram.Client) error {
	raiseNofile(*n + 256)
	before, err := rssKiB(*pid)
	if err != nil {
		return err
	}
	var (
		mu       sync.Mutex
		sessions = make([]*session, 0, *n)
		failed   atomic.Int64
		firstErr atomic.Pointer[string]
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(*n) && failed.Load() < int64(*maxFail) {
				s, err := connect(client)
				if err != nil {
					failed.Add(1)
					msg := err.Error()
					firstErr.CompareAndSwap(nil, &msg)
					continue
				}
				mu.Lock()
				sessions = append(sessions, s)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	loginTime := time.Since(start)
	defer func() {
		for _, s := range sessions {
			s.close()
		}
	}()
	if *ready != "" {
		// Lets the caller look at the gateway while the sessions sit idle
		// (bench/gateway.sh takes a heap profile).
		if err := os.WriteFile(*ready, nil, 0o600); err != nil {
			return err
		}
	}
	time.Sleep(*hold)
	after, err := rssKiB(*pid)
	if err != nil {
		return err
	}
	// Every session held must still answer.
	dead := 0
	for _, s := range sessions {
		_ = s.conn.SetDeadline(time.Now().Add(30 * time.Second))
		if err := s.query(); err != nil {
			dead++
			if firstErr.Load() == nil {
				msg := "after the hold: " + err.Error()
				firstErr.Store(&msg)
			}
		}
	}
	held := len(sessions) - dead
	fmt.Printf("asked %d\nheld %d\nfailed %d\nlogin_s %.1f\nrss_before_kib %d\nrss_after_kib %d\n",
		*n, held, int(failed.Load())+dead, loginTime.Seconds(), before, after)
	if held > 0 {
		fmt.Printf("rss_per_conn_kib %.1f\n", float64(after-before)/float64(held))
	}
	if e := firstErr.Load(); e != nil {
		fmt.Printf("first_error %s\n", strings.ReplaceAll(*e, "\n", " "))
	}
	return nil
}

// raiseNofile lifts the soft RLIMIT_NOFILE to want (within the hard limit):
// every held session is a descriptor here.
func raiseNofile(want int) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	if rl.Cur < uint64(want) {
		rl.Cur = min(uint64(want), rl.Max)
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	if rl.Cur < uint64(want) {
		fmt.Fprintf(os.Stderr, "gwload: RLIMIT_NOFILE is %d, below the %d sessions asked for\n", rl.Cur, want)
	}
}

// rssKiB reads VmRSS of process p from /proc.
func rssKiB(p int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(p) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", p)
}
