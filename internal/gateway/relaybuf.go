package gateway

import (
	"io"
	"sync"
)

// Relay buffers. An idle session waits in a read; the buffer it waits
// with is most of what it costs to hold (10,000 idle clients are a target,
// README "One client's latency, and idle sessions held"). So a relay reads
// into a small buffer of its own and borrows a large one from bigBufs only
// while reads fill the small one (a stream: a large result, COPY, a deep
// pipeline), giving it back once a read does not fill it.
const (
	smallBuf = 4 << 10
	bigBuf   = 32 << 10
)

var (
	bigBufs   = sync.Pool{New: func() any { b := make([]byte, bigBuf); return &b }}
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
)

// msgReader is a buffered reader for a relay's message loop, as
// bufio.Reader (Peek, Discard, Buffered, Read) with the buffers above: it
// holds messages of up to Size (bigBuf) bytes whole, and smallBuf while
// idle. Errors are returned once, as bufio's: a read deadline used to wake
// the loop does not stick.
type msgReader struct {
	r     io.Reader
	small *[]byte
	big   *[]byte
	buf   []byte // small or *big
	rpos  int
	wpos  int
	err   error
	// full is set when the last read filled the space it was given: more
	// is probably on its way, keep the big buffer.
	full bool
}

func newMsgReader(r io.Reader) *msgReader {
	m := &msgReader{r: r, small: smallBufs.Get().(*[]byte)}
	m.buf = *m.small
	return m
}

// Size is the largest message Peek can return whole.
func (m *msgReader) Size() int { return bigBuf }

// Buffered is the number of bytes read and not yet consumed.
func (m *msgReader) Buffered() int { return m.wpos - m.rpos }

func (m *msgReader) readErr() error {
	err := m.err
	m.err = nil
	return err
}

// grow moves to the big buffer, keeping what is buffered.
func (m *msgReader) grow() {
	if m.big != nil {
		return
	}
	m.big = bigBufs.Get().(*[]byte)
	n := copy(*m.big, m.buf[m.rpos:m.wpos])
	m.buf, m.rpos, m.wpos = *m.big, 0, n
}

// release gives the big buffer back (nothing buffered, so the next read
// may block: an idle session waits with the small one).
func (m *msgReader) release() {
	if m.big != nil {
		bigBufs.Put(m.big)
		m.big = nil
	}
	m.buf, m.rpos, m.wpos = *m.small, 0, 0
}

// Close gives the buffers back; the reader must not be used after.
func (m *msgReader) Close() {
	if m.big != nil {
		bigBufs.Put(m.big)
		m.big = nil
	}
	if m.small != nil {
		smallBufs.Put(m.small)
		m.small = nil
	}
	m.buf, m.rpos, m.wpos = nil, 0, 0
}

// fill reads once into the free space, first making room.
func (m *msgReader) fill() {
	if m.rpos > 0 {
		m.wpos = copy(m.buf, m.buf[m.rpos:m.wpos])
		m.rpos = 0
	}
	for i := 0; i < 100; i++ { // bufio's bound on empty reads
		space := len(m.buf) - m.wpos
		n, err := m.r.Read(m.buf[m.wpos:])
		m.wpos += n
		m.full = n == space
		if err != nil {
			m.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	m.err = io.ErrNoProgress
}

// Peek returns the next n bytes (n at most Size) without consuming them,
// reading until they are there or an error, returned with the bytes there
// are.
func (m *msgReader) Peek(n int) ([]byte, error) {
	n = min(n, bigBuf)
	switch {
	case m.big == nil && m.full:
		m.grow() // the last read filled the small buffer: a stream
	case m.big != nil && !m.full && m.rpos == m.wpos && n <= smallBuf:
		m.release() // drained: an idle session waits with the small one
	}
	if n > len(m.buf) {
		m.grow()
	}
	for m.wpos-m.rpos < n && m.err == nil {
		m.fill()
	}
	if m.wpos-m.rpos < n {
		return m.buf[m.rpos:m.wpos], m.readErr()
	}
	return m.buf[m.rpos : m.rpos+n], nil
}

// Discard skips the next n bytes (at most what is buffered).
func (m *msgReader) Discard(n int) (int, error) {
	n = min(n, m.wpos-m.rpos)
	m.rpos += n
	return n, nil
}

// Read reads into p: buffered bytes first, else straight from the
// underlying reader (large messages stream through without the buffer).
func (m *msgReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if m.rpos == m.wpos {
		if m.err != nil {
			return 0, m.readErr()
		}
		return m.r.Read(p)
	}
	n := copy(p, m.buf[m.rpos:m.wpos])
	m.rpos += n
	return n, nil
}
