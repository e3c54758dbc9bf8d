package node

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
)

// Audit anchors. Each node keeps its own hash-chained audit log on its
// own volume; every anchorInterval its daemon writes the chain's head
// (seq and hash) into etcd, outside the node, so that a node's log cut
// short or rewritten afterwards no longer matches what the cluster saw
// (audit verify --cluster). An anchor carries an HMAC under the cluster's
// config key: etcd's other clients (Patroni runs as PostgreSQL's OS user
// with a client certificate) cannot forge one.

const anchorInterval = 10 * time.Second

// anchorPrefix is outside Patroni's namespace, which Patroni reads whole.
func (n *Node) anchorPrefix() string { return "/pgshield-audit/" + n.cl.Scope + "/" }

type anchorValue struct {
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	At   time.Time `json:"at"`
	MAC  string    `json:"mac"`
}

func (n *Node) anchorMAC(node string, a anchorValue) string {
	m := hmac.New(sha256.New, []byte(n.secrets.Config))
	fmt.Fprintf(m, "pgshield-audit-anchor\x00%s\x00%s\x00%d\x00%s\x00%d", n.cl.Scope, node, a.Seq, a.Hash, a.At.UnixNano())
	return hex.EncodeToString(m.Sum(nil))
}

// RunAnchors writes head() into etcd every anchorInterval (when it moved)
// until ctx ends.
func (n *Node) RunAnchors(ctx context.Context, head func() (uint64, string)) {
	t := time.NewTicker(anchorInterval)
	defer t.Stop()
	var last uint64
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		seq, hash := head()
		if seq == 0 || seq == last {
			continue
		}
		if err := n.putAnchor(ctx, seq, hash); err != nil {
			if !failing {
				n.c.Log.Warn("The audit chain's head could not be anchored in etcd; retrying.", "error", err)
			}
			failing = true
			continue
		}
		if failing {
			n.c.Log.Info("The audit chain's head is anchored in etcd again.", "seq", seq)
		}
		failing, last = false, seq
	}
}

func (n *Node) putAnchor(ctx context.Context, seq uint64, hash string) error {
	a := anchorValue{Seq: seq, Hash: hash, At: time.Now().UTC()}
	a.MAC = n.anchorMAC(n.cl.Node, a)
	v, _ := json.Marshal(a)
	req := map[string][]byte{"key": []byte(n.anchorPrefix() + n.cl.Node), "value": v}
	_, err := n.etcdPost(ctx, "/v3/kv/put", req)
	return err
}

// Anchors are every node's last anchor, as etcd holds them.
func (n *Node) Anchors(ctx context.Context) ([]apitype.AuditAnchor, error) {
	prefix := []byte(n.anchorPrefix())
	end := bytes.Clone(prefix)
	end[len(end)-1]++ // the prefix's range: '/' + 1
	body, err := n.etcdPost(ctx, "/v3/kv/range", map[string][]byte{"key": prefix, "range_end": end})
	if err != nil {
		return nil, err
	}
	var r struct {
		Kvs []struct {
			Key   []byte `json:"key"`
			Value []byte `json:"value"`
		} `json:"kvs"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	out := []apitype.AuditAnchor{}
	for _, kv := range r.Kvs {
		node := string(bytes.TrimPrefix(kv.Key, prefix))
		var a anchorValue
		an := apitype.AuditAnchor{Node: node, Self: node == n.cl.Node}
		if err := json.Unmarshal(kv.Value, &a); err == nil {
			an.Seq, an.Hash, an.At = a.Seq, a.Hash, a.At
			an.Authentic = hmac.Equal([]byte(a.MAC), []byte(n.anchorMAC(node, a)))
		}
		out = append(out, an)
	}
	return out, nil
}

// etcdPost sends req to etcd's JSON gateway, each member in turn.
func (n *Node) etcdPost(ctx context.Context, path string, req any) ([]byte, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var last error
	for _, ep := range n.cl.Etcd {
		cctx, cancel := context.WithTimeout(ctx, showTimeout)
		r, err := http.NewRequestWithContext(cctx, "POST", "https://"+ep+path, bytes.NewReader(b))
		if err != nil {
			cancel()
			return nil, err
		}
		resp, err := n.etcd.Do(r)
		if err != nil {
			cancel()
			last = err
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		resp.Body.Close()
		cancel()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s: %s", ep, strconv.Quote(string(body[:min(len(body), 200)])))
		}
		if err != nil {
			last = err
			continue
		}
		return body, nil
	}
	return nil, fmt.Errorf("etcd: %w", last)
}
