package wire

import (
	"encoding/binary"
	"testing"
)

// boundaries returns every offset at which a message ends in stream.
func boundaries(stream []byte) map[int]bool {
	out := map[int]bool{}
	for i := 0; i+5 <= len(stream); {
		n := int(binary.BigEndian.Uint32(stream[i+1:]))
		if n < 4 {
			n = 4
		}
		i += 1 + n
		if i <= len(stream) {
			out[i] = true
		}
	}
	return out
}

func tmsg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

// readies counts the ReadyForQuery messages in stream whose status byte
// is in it, and returns the last status.
func readies(stream []byte) (n int64, status byte) {
	for i := 0; i+5 <= len(stream); {
		l := int(binary.BigEndian.Uint32(stream[i+1:]))
		if l < 4 {
			l = 4
		}
		if stream[i] == 'Z' && l > 4 && i+5 < len(stream) {
			n, status = n+1, stream[i+5]
		}
		i += 1 + l
	}
	return n, status
}

func checkTracker(t *testing.T, stream []byte, chunk int) {
	t.Helper()
	want := boundaries(stream)
	wantReady, wantStatus := readies(stream)
	var tr Tracker
	defer func() {
		// Every ReadyForQuery counted once, whatever the chunking.
		if tr.Ready != wantReady || tr.Status != wantStatus {
			t.Fatalf("chunk %d: Ready, Status = %d, %q; want %d, %q", chunk, tr.Ready, tr.Status, wantReady, wantStatus)
		}
	}()
	for off := 0; off < len(stream); off += chunk {
		end := min(off+chunk, len(stream))
		last := tr.Advance(stream[off:end])
		// The reported offset is the greatest boundary inside this chunk.
		wantLast := 0
		for b := range want {
			if b > off && b <= end && b-off > wantLast {
				wantLast = b - off
			}
		}
		if last != wantLast {
			t.Fatalf("chunk %d at %d: Advance = %d; want %d", chunk, off, last, wantLast)
		}
		if tr.AtBoundary() != want[end] {
			t.Fatalf("chunk %d at %d: AtBoundary = %v; want %v", chunk, off, tr.AtBoundary(), want[end])
		}
	}
}

func TestTracker(t *testing.T) {
	var stream []byte
	stream = append(stream, tmsg('T', "rowdesc-------")...)
	stream = append(stream, tmsg('D', "")...)
	stream = append(stream, tmsg('D', string(make([]byte, 70000)))...)
	stream = append(stream, tmsg('C', "SELECT 1")...)
	stream = append(stream, tmsg('Z', "I")...)
	stream = append(stream, tmsg('Z', "T")...)
	stream = append(stream, tmsg('Z', "")...) // malformed: no status, not counted
	stream = append(stream, tmsg('C', "BEGIN")...)
	stream = append(stream, tmsg('Z', "E")...)
	for _, chunk := range []int{1, 2, 3, 5, 7, 64, 4096, len(stream)} {
		checkTracker(t, stream, chunk)
	}
}

func FuzzTracker(f *testing.F) {
	f.Add([]byte("Z\x00\x00\x00\x05I"), 3)
	f.Add(append(tmsg('D', "abc"), tmsg('C', "x")...), 1)
	f.Add(append(append(tmsg('Z', "T"), tmsg('Z', "")...), tmsg('Z', "Ixx")...), 5)
	f.Fuzz(func(t *testing.T, stream []byte, chunk int) {
		if chunk <= 0 || chunk > 1<<16 || len(stream) > 1<<16 {
			return
		}
		// Only streams of whole, plausible messages: clamp lengths.
		var s []byte
		for i := 0; i+5 <= len(stream) && len(s) < 1<<16; {
			n := int(binary.BigEndian.Uint32(stream[i+1:]) % 300)
			body := min(n, len(stream)-i-5)
			s = append(s, tmsg(stream[i], string(stream[i+5:i+5+body]))...)
			i += 5 + body
		}
		checkTracker(t, s, chunk)
	})
}
