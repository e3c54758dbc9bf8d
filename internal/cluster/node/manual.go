package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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

// manual POSTs to this node's Patroni (with the REST password, which
// only Patroni's YAML and this process hold) and waits for its answer.
func (n *Node) manual(ctx context.Context, action string, body map[string]string, from, to string) (apitype.ClusterManualResult, error) {
	res := apitype.ClusterManualResult{Action: action, From: from, To: to}
	b, _ := json.Marshal(body)
	ctx, cancel := context.WithTimeout(ctx, manualTimeout)
	defer cancel()
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(n.cl.RESTPort)) + "/" + action
	req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(b))
	if err != nil {
		return res, err
	}
	req.Header.Set("Content-Type", "application/json")
	// The password goes only to Patroni itself, checked just before.
	if err := n.checkREST(); err != nil {
		return res, clienterr.New(apitype.CodeUnavailable, "%v", err)
	}
	req.SetBasicAuth(patroni.RESTUser, n.settings.RESTPassword)
	c := &http.Client{Timeout: manualTimeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{Proxy: nil}}
	resp, err := c.Do(req)
	if err != nil {
		return res, clienterr.New(apitype.CodeUnavailable, "Patroni: %v", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	res.Message = strings.ToValidUTF8(strings.TrimSpace(string(msg)), "?")
	n.c.Log.Info("Patroni answered a manual "+action+".", "from", from, "to", to, "status", resp.StatusCode, "message", res.Message)
	switch {
	case resp.StatusCode == http.StatusOK:
		return res, nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return res, fmt.Errorf("Patroni refused pgshield's credentials (%s)", resp.Status)
	case resp.StatusCode >= 500:
		return res, clienterr.New(apitype.CodeUnavailable, "Patroni: %s: %s", resp.Status, res.Message)
	default:
		// 412: not possible now (no healthy candidate, not synchronous...).
		return res, clienterr.New(apitype.CodeInvalid, "Patroni: %s", res.Message)
	}
}
