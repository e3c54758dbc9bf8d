package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ParseSyslogURL checks a pgshield.audit_syslog value: udp://host:port,
// tcp://host:port or unix:///path (a datagram socket such as /dev/log, or
// a stream socket). It returns the network and address to dial.
func ParseSyslogURL(s string) (network, addr string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("invalid syslog URL %q: %v", s, err)
	}
	switch u.Scheme {
	case "udp", "tcp":
		if u.Path != "" && u.Path != "/" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return "", "", fmt.Errorf("invalid syslog URL %q: use %s://host:port", s, u.Scheme)
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || host == "" {
			return "", "", fmt.Errorf("invalid syslog URL %q: use %s://host:port", s, u.Scheme)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return "", "", fmt.Errorf("invalid syslog URL %q: port must be 1-65535", s)
		}
		return u.Scheme, u.Host, nil
	case "unix":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") || u.RawQuery != "" {
			return "", "", fmt.Errorf("invalid syslog URL %q: use unix:///absolute/path", s)
		}
		return "unix", u.Path, nil
	}
	return "", "", fmt.Errorf("invalid syslog URL %q: the scheme must be udp, tcp or unix", s)
}

// Forwarder sends audit records to a syslog receiver in RFC 5424 format:
// facility 13 (log audit), severity from the record (warning for failures,
// err/crit for PostgreSQL ERROR/FATAL/PANIC, info otherwise), APP-NAME
// pgshield, MSGID the record type, structured data [meta sequenceId=...]
// (RFC 5424 7.3.1) and as MSG the record's exact JSON line, so the
// receiver holds a copy of the chain it can verify. Over TCP messages are
// framed by octet counting (RFC 6587 3.4.1); over UDP and Unix datagram
// sockets each message is one datagram.
//
// Forwarding is best effort and never slows the audit log: Send queues
// without blocking, a full queue or a failed send drops the message, and
// drops are counted and logged. The log on the volume is the record.
type Forwarder struct {
	network, addr string
	host          string
	pid           int
	log           *slog.Logger
	queue         chan []byte
	done          chan struct{}
	wg            sync.WaitGroup
	dropped       atomic.Int64
	sent          atomic.Int64
	closeOnce     sync.Once
}

// NewForwarder starts forwarding to rawURL (see ParseSyslogURL).
func NewForwarder(rawURL string, log *slog.Logger) (*Forwarder, error) {
	network, addr, err := ParseSyslogURL(rawURL)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	host, _ := os.Hostname()
	f := &Forwarder{network: network, addr: addr, host: sanitizeHeader(host, 255), pid: os.Getpid(),
		log: log, queue: make(chan []byte, 4096), done: make(chan struct{})}
	f.wg.Add(1)
	go f.run()
	return f, nil
}

// Send queues one record line (copied) for forwarding.
func (f *Forwarder) Send(seq uint64, line []byte) {
	if f == nil {
		return
	}
	msg := Format5424(seq, line, f.host, f.pid, time.Now())
	select {
	case f.queue <- msg:
	default:
		f.dropped.Add(1)
	}
}

// Stats returns how many messages were sent and dropped so far.
func (f *Forwarder) Stats() (sent, dropped int64) { return f.sent.Load(), f.dropped.Load() }

// Close stops forwarding after trying, for up to two seconds, to send what
// is queued.
func (f *Forwarder) Close() {
	if f == nil {
		return
	}
	f.closeOnce.Do(func() { close(f.done) })
	f.wg.Wait()
}

func (f *Forwarder) dial() (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if f.network == "unix" {
		c, err := d.Dial("unixgram", f.addr)
		if err == nil {
			return c, nil
		}
		return d.Dial("unix", f.addr)
	}
	return d.Dial(f.network, f.addr)
}

func (f *Forwarder) run() {
	defer f.wg.Done()
	var (
		conn      net.Conn
		stream    bool
		backoff   = 500 * time.Millisecond
		nextDial  time.Time
		lastDrops int64
		lastWarn  time.Time
		drain     <-chan time.Time
	)
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	send := func(msg []byte) {
		if conn == nil {
			if time.Now().Before(nextDial) {
				f.dropped.Add(1)
				return
			}
			c, err := f.dial()
			if err != nil {
				nextDial = time.Now().Add(backoff)
				backoff = min(backoff*2, 30*time.Second)
				f.dropped.Add(1)
				return
			}
			conn, backoff = c, 500*time.Millisecond
			_, stream = c.(*net.TCPConn)
			if uc, ok := c.(*net.UnixConn); ok && uc.RemoteAddr() != nil && uc.RemoteAddr().Network() == "unix" {
				stream = true
			}
		}
		out := msg
		if stream {
			out = append([]byte(strconv.Itoa(len(msg))+" "), msg...)
		} else if len(out) > maxDatagram {
			out = out[:maxDatagram]
		}
		_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write(out); err != nil {
			conn.Close()
			conn = nil
			f.dropped.Add(1)
			return
		}
		f.sent.Add(1)
	}
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case msg := <-f.queue:
			send(msg)
		case <-tick.C:
		case <-f.done:
			if drain == nil {
				drain = time.After(2 * time.Second)
			}
			select {
			case msg := <-f.queue:
				send(msg)
				continue
			case <-drain:
			default:
			}
			return
		case <-drain:
			return
		}
		if d := f.dropped.Load(); d != lastDrops && time.Since(lastWarn) >= 10*time.Second {
			f.log.Warn("Audit records were not forwarded to syslog.", "dropped_total", d, "syslog", f.network+"://"+f.addr)
			lastDrops, lastWarn = d, time.Now()
		}
	}
}

// maxDatagram keeps UDP messages within one IPv4 datagram.
const maxDatagram = 65000

// Format5424 renders one audit record line as an RFC 5424 message.
func Format5424(seq uint64, line []byte, host string, pid int, now time.Time) []byte {
	var hdr struct {
		Type    string `json:"type"`
		Outcome string `json:"outcome"`
		Time    string `json:"time"`
		Fields  struct {
			Severity string `json:"severity"`
		} `json:"fields"`
	}
	_ = json.Unmarshal(line, &hdr)
	sev := 6 // informational
	switch {
	case hdr.Fields.Severity == "PANIC" || hdr.Fields.Severity == "FATAL":
		sev = 2
	case hdr.Fields.Severity == "ERROR":
		sev = 3
	case hdr.Outcome == OutcomeFailure:
		sev = 4
	case hdr.Fields.Severity == "WARNING":
		sev = 4
	}
	ts := now.UTC()
	if t, err := time.Parse(time.RFC3339Nano, hdr.Time); err == nil {
		ts = t.UTC()
	}
	if host == "" {
		host = "-"
	}
	msgid := sanitizeHeader(hdr.Type, 32)
	if msgid == "" {
		msgid = "-"
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "<%d>1 %s %s pgshield %d %s [meta sequenceId=\"%d\"] ",
		13*8+sev, ts.Format("2006-01-02T15:04:05.000000Z07:00"), host, pid, msgid, (seq+2147483646)%2147483647+1)
	b.Write(line)
	return b.Bytes()
}

// sanitizeHeader keeps a header field within RFC 5424's PRINTUSASCII and
// length limits.
func sanitizeHeader(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; i++ {
		if c := s[i]; c > 32 && c < 127 {
			b.WriteByte(c)
		}
	}
	return b.String()
}
