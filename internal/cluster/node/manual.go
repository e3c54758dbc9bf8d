package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/cluster/patroni"
)

// manualTimeout bounds a switchover or failover: Patroni waits for the
// new leader before it answers.
const manualTimeout = 2 * time.Minute

// Switchover asks Patroni to hand the leader role from the current
// leader to the node named to, or, with to empty, to the synchronous
// standby (the only member Patroni promotes in synchronous mode). It
// returns once Patroni reports the outcome.
func (n *Node) Switchover(ctx context.Context, to string) (apitype.ClusterManualResult, error) {
	members, err := n.patroniMembers(ctx)
	if err != nil {
		return apitype.ClusterManualResult{}, clienterr.New(apitype.CodeUnavailable, "%v", err)
	}
	leader, sync := "", ""
	for _, m := range members {
		switch m.Role {
		case "leader":
			leader = m.Name
		case "sync_standby":
			sync = m.Name
		}
	}
	if leader == "" {
		return apitype.ClusterManualResult{}, clienterr.New(apitype.CodeUnavailable, "the cluster has no leader: use cluster failover --to NODE")
	}
	if to == "" {
		if sync == "" {
			return apitype.ClusterManualResult{}, clienterr.New(apitype.CodeUnavailable, "no synchronous standby to switch over to")
		}
		to = sync
	}
	if err := n.checkMember(members, to); err != nil {
		return apitype.ClusterManualResult{}, err
	}
	if to == leader {
		return apitype.ClusterManualResult{}, clienterr.New(apitype.CodeInvalid, "%s is the leader already", to)
	}
	return n.manual(ctx, "switchover", map[string]string{"leader": leader, "candidate": to}, leader, to)
}

// Failover asks Patroni to promote the node named to, which it does
// only when no healthy leader is left or to is the synchronous standby
// (it answers why not otherwise).
func (n *Node) Failover(ctx context.Context, to string) (apitype.ClusterManualResult, error) {
	if to == "" {
		return apitype.ClusterManualResult{}, clienterr.New(apitype.CodeInvalid, "failover needs the node to promote (--to NODE)")
	}
	members, err := n.patroniMembers(ctx)
	if err != nil {
		return apitype.ClusterManualResult{}, clienterr.New(apitype.CodeUnavailable, "%v", err)
	}
	if err := n.checkMember(members, to); err != nil {
		return apitype.ClusterManualResult{}, err
	}
	leader := ""
	for _, m := range members {
		if m.Role == "leader" {
			leader = m.Name
		}
	}
	return n.manual(ctx, "failover", map[string]string{"candidate": to}, leader, to)
}

func (n *Node) checkMember(members []apitype.ClusterMember, name string) error {
	for _, m := range members {
		if m.Name == name {
			return nil
		}
	}
	return clienterr.New(apitype.CodeNotFound, "%q is not a member of cluster %s", name, n.cl.Scope)
}

// manual POSTs to this node's Patroni and waits for its answer.
func (n *Node) manual(ctx context.Context, action string, body map[string]string, from, to string) (apitype.ClusterManualResult, error) {
	res := apitype.ClusterManualResult{Action: action, From: from, To: to}
	b, _ := json.Marshal(body)
	status, msg, err := n.patroniChange(ctx, "POST", "/"+action, b, manualTimeout)
	if err != nil {
		return res, err
	}
	res.Message = msg
	n.c.Log.Info("Patroni answered a manual "+action+".", "from", from, "to", to, "status", status, "message", res.Message)
	switch {
	case status == http.StatusOK:
		return res, nil
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return res, errPatroniCredentials(status)
	case status >= 500:
		return res, clienterr.New(apitype.CodeUnavailable, "Patroni: %d %s: %s", status, http.StatusText(status), res.Message)
	default:
		// 412: not possible now (no healthy candidate, not synchronous...).
		return res, clienterr.New(apitype.CodeInvalid, "Patroni: %s", res.Message)
	}
}

// patroniChange sends a request that changes something to this node's
// Patroni, with the REST password (which only Patroni's YAML and this
// process hold), once its port is checked to be Patroni's. It returns
// the status and the first 4 KiB of the answer as one line of text; err
// is for a request that got no answer. No error names the password: it
// travels in the Authorization header only.
func (n *Node) patroniChange(ctx context.Context, method, path string, body []byte, timeout time.Duration) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(n.cl.RESTPort)) + path
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	// The password goes only to Patroni itself, checked just before.
	if err := n.checkREST(); err != nil {
		return 0, "", clienterr.New(apitype.CodeUnavailable, "%v", err)
	}
	req.SetBasicAuth(patroni.RESTUser, n.settings.RESTPassword)
	c := &http.Client{Timeout: timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{Proxy: nil}}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", clienterr.New(apitype.CodeUnavailable, "Patroni (127.0.0.1:%d) did not answer: %v", n.cl.RESTPort, errors.Unwrap(err))
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, oneLine(msg), nil
}

// oneLine makes an answer of Patroni's printable on one line.
func oneLine(b []byte) string {
	s := strings.ToValidUTF8(strings.TrimSpace(string(b)), "?")
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

func errPatroniCredentials(status int) error {
	return clienterr.New(apitype.CodeUnavailable, "Patroni refused pgshield's credentials (%d %s)", status, http.StatusText(status))
}
