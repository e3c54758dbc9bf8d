package fence

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// etcd 3.4's JSON gRPC gateway (on every member's client port) is the
// protocol: POST a request object, get a response object back. int64
// fields travel as decimal strings and bytes as base64, as protobuf's
// JSON mapping has them.

// maxBody bounds what is read of a member's answer: a range of one key
// and a lease's time to live are a few hundred bytes.
const maxBody = 64 << 10

// ErrMalformed means a member's answer could not be understood. It never
// counts as confirmation.
var ErrMalformed = errors.New("malformed etcd answer")

type rangeRequest struct {
	Key []byte `json:"key"` // base64 in JSON
	// Serializable false is a linearizable read: the member confirms with
	// a quorum (ReadIndex) that it is current before answering, so a
	// member cut off from the majority cannot answer it.
	Serializable bool `json:"serializable"`
}

type leaseTTLRequest struct {
	ID string `json:"ID"`
}

// rangeAnswer is what a range of one key says.
type rangeAnswer struct {
	Found bool
	Value string
	Lease int64 // 0: the key has no lease
}

// parseRange reads the answer to a range of key. An answer that holds a
// key other than key, or more than one, is malformed.
func parseRange(body []byte, key string) (rangeAnswer, error) {
	var r struct {
		Header *struct{} `json:"header"`
		Kvs    []struct {
			Key   []byte `json:"key"`
			Value []byte `json:"value"`
			Lease string `json:"lease"`
		} `json:"kvs"`
		Count string `json:"count"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return rangeAnswer{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	// Every successful answer carries a header; an error object does not.
	if r.Header == nil {
		return rangeAnswer{}, fmt.Errorf("%w: no header", ErrMalformed)
	}
	switch len(r.Kvs) {
	case 0:
		if r.Count != "" && r.Count != "0" {
			return rangeAnswer{}, fmt.Errorf("%w: count %q without keys", ErrMalformed, r.Count)
		}
		return rangeAnswer{}, nil
	case 1:
	default:
		return rangeAnswer{}, fmt.Errorf("%w: %d keys for one", ErrMalformed, len(r.Kvs))
	}
	kv := r.Kvs[0]
	if string(kv.Key) != key {
		return rangeAnswer{}, fmt.Errorf("%w: answer for another key", ErrMalformed)
	}
	a := rangeAnswer{Found: true, Value: string(kv.Value)}
	if kv.Lease != "" {
		n, err := strconv.ParseInt(kv.Lease, 10, 64)
		if err != nil {
			return rangeAnswer{}, fmt.Errorf("%w: lease %q", ErrMalformed, kv.Lease)
		}
		a.Lease = n
	}
	return a, nil
}

// parseLeaseTTL reads the answer to a lease's time to live: the whole
// seconds it has left (etcd rounds down), or -1 when it has expired or
// does not exist.
func parseLeaseTTL(body []byte, id int64) (int64, error) {
	var r struct {
		Header *struct{} `json:"header"`
		ID     string    `json:"ID"`
		TTL    string    `json:"TTL"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if r.Header == nil {
		return 0, fmt.Errorf("%w: no header", ErrMalformed)
	}
	if r.ID != strconv.FormatInt(id, 10) {
		return 0, fmt.Errorf("%w: answer for another lease", ErrMalformed)
	}
	if r.TTL == "" {
		// protobuf's JSON leaves out zero values: 0 s left.
		return 0, nil
	}
	ttl, err := strconv.ParseInt(r.TTL, 10, 64)
	if err != nil || ttl < -1 {
		return 0, fmt.Errorf("%w: TTL %q", ErrMalformed, r.TTL)
	}
	return ttl, nil
}

// etcdError is the error object the gateway answers with on failure.
func etcdError(body []byte) string {
	var e struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &e) != nil {
		return "unreadable error"
	}
	msg := e.Error
	if msg == "" {
		msg = e.Message
	}
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return strconv.Quote(msg)
}
