package wire

import "encoding/binary"

// Tracker follows message boundaries in a stream of protocol messages
// without copying or decoding them: it only reads each 5-byte header, and
// the status byte of each ReadyForQuery. The relay uses it to know where it
// may cut a backend stream to end a session with its own ErrorResponse,
// and when the backend is idle. Its cost is a few instructions per message.
type Tracker struct {
	hdr    [5]byte
	hdrLen int    // header bytes seen of the current message (0..5)
	body   uint64 // body bytes still to come of the current message
	rfq    bool   // the next body byte is a ReadyForQuery's status

	// Ready counts the ReadyForQuery messages seen (once their status
	// byte is consumed); Status is the last one's status byte (0 before
	// the first). A ReadyForQuery without a body counts as neither.
	Ready  int64
	Status byte
}

// Advance consumes p and returns the offset just past the last message
// boundary inside p (0 if none; len(p) if p ends exactly on one).
func (t *Tracker) Advance(p []byte) int {
	last, i := 0, 0
	for i < len(p) {
		if t.hdrLen < 5 {
			k := copy(t.hdr[t.hdrLen:], p[i:])
			t.hdrLen += k
			i += k
			if t.hdrLen < 5 {
				break
			}
			n := binary.BigEndian.Uint32(t.hdr[1:])
			if n < 4 {
				n = 4 // malformed from the backend; treat as empty body
			}
			t.body = uint64(n) - 4
			t.rfq = t.hdr[0] == 'Z' && t.body > 0
		}
		if t.rfq && i < len(p) {
			t.Status = p[i]
			t.Ready++
			t.rfq = false
		}
		rest := uint64(len(p) - i)
		if t.body > rest {
			t.body -= rest
			i = len(p)
			break
		}
		i += int(t.body)
		t.body = 0
		t.hdrLen = 0
		last = i
	}
	return last
}

// AtBoundary reports whether everything consumed so far ends on a message
// boundary.
func (t *Tracker) AtBoundary() bool { return t.hdrLen == 0 && t.body == 0 }
