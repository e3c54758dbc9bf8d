package node

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Key checks across the cluster. Every node wraps its own data key under
// the same customer-managed key and proves, every
// pgshield.key_revalidation_interval, that the key still unwraps it. When
// one node's check moves its state (a revoked key: Inaccessible; the key
// back: Available), it bumps one key in etcd, and every node, polling that
// key every keyCheckPoll, runs its own check at once: a revocation seen by
// one node shuts every node's data away within seconds, not one interval
// per node.
//
// The bump carries no verdict. A node shuts its data away, or brings it
// back, only on its own KMS's answer, so an etcd client (Patroni's
// certificate is readable by PostgreSQL's OS user) can make nodes ask
// their KMS, no more, and not more often than keyCheckMinGap.

const (
	keyCheckPoll   = time.Second
	keyCheckMinGap = 5 * time.Second
)

// keyCheckKey is outside Patroni's namespace, which Patroni reads whole.
func (n *Node) keyCheckKey() string { return "/pgshield-keys/" + n.cl.Scope + "/check" }

// NudgeKeyChecks asks every node to check its key now, and returns the
// revision its bump made (RunKeyChecks does not answer its own bump).
func (n *Node) NudgeKeyChecks(ctx context.Context, state string) (int64, error) {
	v, _ := json.Marshal(map[string]any{"node": n.cl.Node, "state": state, "at": time.Now().UTC()})
	body, err := n.etcdPost(ctx, "/v3/kv/put", map[string][]byte{"key": []byte(n.keyCheckKey()), "value": v})
	if err != nil {
		return 0, err
	}
	var r struct {
		Header struct {
			Revision string `json:"revision"`
		} `json:"header"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, fmt.Errorf("etcd: %w", err)
	}
	rev, err := strconv.ParseInt(r.Header.Revision, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("etcd: revision %q: %w", r.Header.Revision, err)
	}
	return rev, nil
}

// keyCheckRevision is the bump key's last change (0: never bumped), read
// linearizably (the JSON gateway's range default).
func (n *Node) keyCheckRevision(ctx context.Context) (int64, error) {
	// keys_only: the value is anyone's to write, and could be made too big
	// to read.
	body, err := n.etcdPost(ctx, "/v3/kv/range", map[string]any{"key": []byte(n.keyCheckKey()), "keys_only": true})
	if err != nil {
		return 0, err
	}
	var r struct {
		Kvs []struct {
			ModRevision string `json:"mod_revision"`
		} `json:"kvs"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, fmt.Errorf("etcd: %w", err)
	}
	if len(r.Kvs) == 0 {
		return 0, nil
	}
	rev, err := strconv.ParseInt(r.Kvs[0].ModRevision, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("etcd: mod_revision %q: %w", r.Kvs[0].ModRevision, err)
	}
	return rev, nil
}

// KeyChecks is the cluster side of the key controller: Changed bumps,
// Run answers bumps with check.
type KeyChecks struct {
	n     *Node
	check func(context.Context)
	poll  time.Duration
	gap   time.Duration
}

// KeyChecks makes the pair; check is the key controller's revalidation.
func (n *Node) KeyChecks(check func(context.Context)) *KeyChecks {
	return &KeyChecks{n: n, check: check, poll: keyCheckPoll, gap: keyCheckMinGap}
}

// Changed is called by the key controller after its own check moved the
// key's state; it tells the other nodes without waiting for them.
func (k *KeyChecks) Changed(state string) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if _, err := k.n.NudgeKeyChecks(ctx, state); err != nil {
			k.n.c.Log.Warn("Could not ask the other nodes to check their key now; each checks at its own interval.", "state", state, "error", err)
			return
		}
		k.n.c.Log.Info("Asked every node to check its key now.", "state", state)
	}()
}

// Run polls the bump key every poll until ctx ends and runs check after
// any change to it, at most once per gap (a change inside the gap is
// answered when it ends). Any change counts, a deletion or a lower
// revision too, so that no one can hide a bump by deleting the key after
// it; this node's own bump counts as well (one more check, rate-limited),
// so that it can never hide another node's made just before.
func (k *KeyChecks) Run(ctx context.Context) {
	t := time.NewTicker(k.poll)
	defer t.Stop()
	var seen int64 = -1 // the first read only learns where etcd is
	var lastCheck time.Time
	pending, failing := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rev, err := k.n.keyCheckRevision(ctx)
		switch {
		case err != nil:
			if !failing && ctx.Err() == nil {
				k.n.c.Log.Warn("Reading the cluster's key-check key in etcd failed; retrying.", "error", err)
			}
			failing = true
		case seen < 0:
			seen, failing = rev, false
		default:
			if rev != seen {
				pending = true
			}
			seen, failing = rev, false
		}
		if pending && time.Since(lastCheck) >= k.gap {
			pending, lastCheck = false, time.Now()
			// Each one logged: a stream of them, beyond what the nodes'
			// own key changes explain, is an etcd client at work.
			k.n.c.Log.Info("Another node asked for a key check; checking now.")
			k.check(ctx)
		}
	}
}
