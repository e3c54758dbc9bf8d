package gateway

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"testing"
)

// chunkReader returns its data in reads of the sizes next gives, with err
// (once) before the read at errAt.
type chunkReader struct {
	data  []byte
	next  func() int
	errAt int
	err   error
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if c.err != nil && len(c.data) == c.errAt {
		err := c.err
		c.err = nil
		return 0, err
	}
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.data), max(1, c.next()))
	if c.err != nil && len(c.data)-n < c.errAt {
		n = len(c.data) - c.errAt
	}
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// readMsgs reads messages as the relays do: whole up to Size, streamed
// past it.
func readMsgs(t *testing.T, m *msgReader) [][]byte {
	t.Helper()
	var got [][]byte
	for {
		hdr, err := m.Peek(5)
		if err != nil {
			if err == io.EOF && len(hdr) == 0 {
				return got
			}
			if isTimeout(err) {
				continue // a wake-up deadline: not sticky
			}
			t.Fatalf("Peek(5) = %d bytes, %v", len(hdr), err)
		}
		size := int(binary.BigEndian.Uint32(hdr[1:])) + 1
		if size <= m.Size() {
			msg, err := m.Peek(size)
			if isTimeout(err) {
				msg, err = m.Peek(size) // a wake-up inside a message: read on
			}
			if err != nil {
				t.Fatalf("Peek(%d): %v", size, err)
			}
			got = append(got, bytes.Clone(msg))
			if n, _ := m.Discard(size); n != size {
				t.Fatalf("Discard(%d) = %d", size, n)
			}
			continue
		}
		var b bytes.Buffer
		for left := int64(size); left > 0; {
			n, err := io.CopyN(&b, m, left)
			left -= n
			if err != nil && !isTimeout(err) {
				t.Fatalf("CopyN(%d): %v", size, err)
			}
		}
		got = append(got, b.Bytes())
	}
}

func TestMsgReader(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 20; round++ {
		var stream []byte
		var want [][]byte
		for i := 0; i < 40; i++ {
			var body []byte
			switch r.IntN(4) {
			case 0:
				body = make([]byte, r.IntN(10))
			case 1:
				body = make([]byte, r.IntN(5000))
			case 2:
				body = make([]byte, bigBuf-5+r.IntN(10)) // around Size
			default:
				body = make([]byte, r.IntN(100000))
			}
			for j := range body {
				body[j] = byte(r.Uint32())
			}
			msg := appendMsg(nil, 'D', body)
			want = append(want, msg)
			stream = append(stream, msg...)
		}
		maxChunk := []int{5, 61, 4096, 1 << 20}[round%4]
		cr := &chunkReader{data: stream, next: func() int { return 1 + r.IntN(maxChunk) },
			errAt: r.IntN(len(stream)), err: errDeadline{}}
		m := newMsgReader(cr)
		got := readMsgs(t, m)
		m.Close()
		if len(got) != len(want) {
			t.Fatalf("round %d: %d messages; want %d", round, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("round %d: message %d differs (%d bytes; want %d)", round, i, len(got[i]), len(want[i]))
			}
		}
	}
}

// TestMsgReaderIdleSmall: after a stream that borrowed the large buffer,
// a session that goes idle waits with the small one, the large one given
// back.
func TestMsgReaderIdleSmall(t *testing.T) {
	var stream []byte
	for i := 0; i < 20; i++ {
		stream = append(stream, appendMsg(nil, 'd', make([]byte, 3000))...) // COPY data
	}
	stream = append(stream, appendMsg(nil, 'c', nil)...)
	idleAt := len(stream)
	stream = append(stream, appendMsg(nil, 'Q', []byte("SELECT 1\x00"))...)
	cr := &chunkReader{data: stream, next: func() int { return 1 << 20 }, errAt: len(stream) - idleAt, err: errDeadline{}}
	m := newMsgReader(cr)
	defer m.Close()
	sawBig := false
	for {
		hdr, err := m.Peek(5)
		if err != nil {
			if !isTimeout(err) {
				t.Fatalf("Peek(5): %v", err)
			}
			break // idle: the stream's end
		}
		sawBig = sawBig || m.big != nil
		size := int(binary.BigEndian.Uint32(hdr[1:])) + 1
		if _, err := m.Peek(size); err != nil {
			t.Fatal(err)
		}
		m.Discard(size)
	}
	if !sawBig {
		t.Fatal("a 60 KB stream never borrowed the large buffer")
	}
	if m.big != nil || len(m.buf) != smallBuf {
		t.Fatalf("idle with a %d-byte buffer (big %v); want the small one", len(m.buf), m.big != nil)
	}
	if msg, err := m.Peek(14); err != nil || msg[0] != 'Q' {
		t.Fatalf("after the idle wake-up: %q, %v", msg, err)
	}
}

type errDeadline struct{}

func (errDeadline) Error() string   { return "i/o timeout" }
func (errDeadline) Timeout() bool   { return true }
func (errDeadline) Temporary() bool { return true }
