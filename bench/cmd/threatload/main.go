// Command threatload drives bench/threat.sh: attacks and a legitimate client
// against a running pgshield gateway, from many loopback sources (Linux
// routes all of 127.0.0.0/8 to lo). It prints "key value" lines.
//
//	threatload -addr A -ca F -user U -password-file P -mode M [flags]
//
// Modes:
//
//	latency  legitimate logins from 127.0.0.1 while -flood-sources sources
//	         hold -flood-per-source idle and trickling sockets each and
//	         -guess-sources sources guess U's password
//	attack   -guess-sources sources guess U's password for -duration;
//	         prints the guesses answered (28P01)
//	banned   one source guesses until it is banned, then for -duration;
//	         prints the guesses answered after the ban, per minute
//	cpu      -n refused connections of one kind (-kind banned: from a
//	         banned source, closed at accept; -kind tls: a full TLS
//	         handshake and startup, then the close); prints the daemon's
//	         (-pid) CPU per connection
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

var (
	addr     = flag.String("addr", "", "gateway host:port")
	caFile   = flag.String("ca", "", "CA certificate")
	user     = flag.String("user", "", "role")
	pwFile   = flag.String("password-file", "", "the role's password")
	mode     = flag.String("mode", "", "latency, attack, banned or cpu")
	duration = flag.Duration("duration", 30*time.Second, "how long attacks run")
	floodSrc = flag.Int("flood-sources", 8, "sources holding idle and trickling sockets")
	floodPer = flag.Int("flood-per-source", 160, "sockets per flooding source")
	guessSrc = flag.Int("guess-sources", 50, "sources guessing the password")
	logins   = flag.Int("logins", 10, "legitimate logins measured (latency)")
	n        = flag.Int("n", 2000, "connections (cpu)")
	kind     = flag.String("kind", "banned", "banned or tls (cpu)")
	pid      = flag.Int("pid", 0, "the daemon's pid (cpu)")
)

func main() {
	flag.Parse()
	pw, err := os.ReadFile(*pwFile)
	if err != nil {
		fail(err)
	}
	password := strings.TrimSpace(string(pw))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	switch *mode {
	case "latency":
		go flood(ctx)
		go guess(ctx, 1)
		time.Sleep(3 * time.Second) // let the load build up
		var ds []time.Duration
		failed := 0
		for i := 0; i < *logins; i++ {
			start := time.Now()
			if err := login(net.IPv4(127, 0, 0, 1), *user, password); err != nil {
				failed++
				fmt.Fprintln(os.Stderr, "legitimate login:", err)
			} else {
				ds = append(ds, time.Since(start))
			}
			time.Sleep(500 * time.Millisecond)
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		fmt.Printf("login_failed %d\n", failed)
		if len(ds) > 0 {
			fmt.Printf("login_median_ms %.0f\nlogin_max_ms %.0f\n", ms(ds[len(ds)/2]), ms(ds[len(ds)-1]))
		}
	case "attack":
		actx, acancel := context.WithTimeout(ctx, *duration)
		defer acancel()
		fmt.Printf("answered %d\n", guess(actx, 1))
	case "banned":
		src := net.IPv4(127, 0, 3, 1)
		for i := 0; i < 20; i++ { // until banned: no answer any more
			if code(login(src, *user, "guess")) != "28P01" {
				break
			}
		}
		answered := 0
		deadline := time.Now().Add(*duration)
		for time.Now().Before(deadline) {
			if code(login(src, *user, "guess")) == "28P01" {
				answered++
			}
		}
		fmt.Printf("answered_per_minute %.1f\n", float64(answered)/duration.Minutes())
	case "cpu":
		src := net.IPv4(127, 0, 3, 1) // banned by -mode banned
		if *kind == "tls" {
			src = net.IPv4(127, 0, 4, 1)
		}
		// The daemon's own background work (timers, state saves, the
		// server-log reader) is measured idle first and subtracted.
		idle := 3 * time.Second
		t0 := cpuTicks(*pid)
		time.Sleep(idle)
		idleTicks := float64(cpuTicks(*pid) - t0)
		before := cpuTicks(*pid)
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for i := 0; i < *n; i++ {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				refusedConn(src)
			}()
		}
		wg.Wait()
		el := time.Since(start)
		ticks := float64(cpuTicks(*pid)-before) - idleTicks*el.Seconds()/idle.Seconds()
		fmt.Printf("cpu_us_per_conn %.0f\nconn_per_sec %.0f\nidle_cpu_pct %.1f\n", max(ticks, 0)*1e4/float64(*n),
			float64(*n)/el.Seconds(), idleTicks/idle.Seconds())
	default:
		fail(fmt.Errorf("unknown -mode %q", *mode))
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fail(err error) {
	fmt.Fprintln(os.Stderr, "threatload:", err)
	os.Exit(1)
}

func login(src net.IP, u, password string) error {
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=localhost port=%s user=%s password='%s' dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=30",
		port(), u, password, *caFile))
	if err != nil {
		return err
	}
	// localhost resolves to 127.0.0.1 and ::1: without this, pgconn would
	// try twice per guess, and each try is a failure the gateway counts.
	cfg.Fallbacks = nil
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
	cfg.DialFunc = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, *addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		c.Close(ctx)
	}
	return err
}

func port() string { _, p, _ := net.SplitHostPort(*addr); return p }

func code(err error) string {
	// errors.As, not a walk of Unwrap() error: pgconn joins the errors of
	// several attempts (Unwrap() []error).
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// guess runs -guess-sources sources guessing the password until ctx ends,
// each source b in 127.0.1.b; it returns the guesses answered (28P01).
func guess(ctx context.Context, third byte) int64 {
	var answered atomic.Int64
	var wg sync.WaitGroup
	for s := 0; s < *guessSrc; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := net.IPv4(127, third, byte(s/250), byte(s%250+1))
			for i := 0; ctx.Err() == nil && i < 1_000_000; i++ {
				if code(login(src, *user, "guess-"+strconv.Itoa(i))) == "28P01" {
					answered.Add(1)
				} else {
					time.Sleep(100 * time.Millisecond) // refused or closed: do not spin
				}
			}
		}()
	}
	wg.Wait()
	return answered.Load()
}

// flood keeps -flood-per-source sockets open from each of -flood-sources
// sources (127.0.2.s): half silent, half trickling a startup packet a byte
// a second; a socket the gateway closes is opened again.
func flood(ctx context.Context) {
	for s := 0; s < *floodSrc; s++ {
		for k := 0; k < *floodPer; k++ {
			go func() {
				src := net.IPv4(127, 0, 2, byte(s+1))
				d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
				for ctx.Err() == nil {
					c, err := d.DialContext(ctx, "tcp", *addr)
					if err != nil {
						time.Sleep(time.Second)
						continue
					}
					if k%2 == 1 {
						_, _ = c.Write([]byte{0, 0, 0x03, 0xe8}) // claims 1,000 bytes
						for ctx.Err() == nil {
							if _, err := c.Write([]byte{0}); err != nil {
								break
							}
							time.Sleep(time.Second)
						}
					} else {
						_ = c.SetReadDeadline(time.Now().Add(5 * time.Minute))
						_, _ = io.Copy(io.Discard, c) // until the gateway closes it
					}
					c.Close()
					time.Sleep(100 * time.Millisecond)
				}
			}()
		}
	}
}

// refusedConn makes one connection that the gateway refuses: from a banned
// source it is closed at accept; otherwise it gets TLS, sends a startup for
// a role and hangs up at the first authentication request.
func refusedConn(src net.IP) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", *addr)
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f}); err != nil {
		return
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
		return
	}
	pem, _ := os.ReadFile(*caFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tc := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	msg, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "nobody", "database": "postgres"}}).Encode(nil)
	if _, err := tc.Write(msg); err != nil {
		return
	}
	_, _ = pgproto3.NewFrontend(tc, tc).Receive()
}

// cpuTicks is utime + stime of pid, in clock ticks (1/100 s).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		fail(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k
}
