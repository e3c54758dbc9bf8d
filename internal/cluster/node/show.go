package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
)

// showTimeout bounds each call cluster show makes.
const showTimeout = 3 * time.Second

// maxBody bounds what is read of any answer.
const maxBody = 1 << 20

// Show is this node's view of the cluster: its fence, Patroni's members
// (its own REST API on the loopback; GETs need no password) and each
// etcd member's health (with the node's client certificate).
func (n *Node) Show(ctx context.Context) apitype.ClusterInfo {
	st := n.fence.Status()
	info := apitype.ClusterInfo{Scope: n.cl.Scope, Node: n.cl.Node, Members: []apitype.ClusterMember{}, Etcd: []apitype.EtcdMember{},
		Leadership: apitype.ClusterLeadership{State: st.State.String(), MayWrite: st.MayWrite, Deadline: st.Deadline,
			LastConfirmed: st.LastConfirmed, LastError: st.LastError}}
	members, err := n.patroniMembers(ctx)
	if err != nil {
		info.PatroniError = err.Error()
	} else {
		info.Members = members
	}
	for _, ep := range n.cl.Etcd {
		m := apitype.EtcdMember{Endpoint: ep}
		if err := n.etcdHealth(ctx, ep); err != nil {
			m.Error = err.Error()
		} else {
			m.Healthy = true
		}
		info.Etcd = append(info.Etcd, m)
	}
	return info
}

func (n *Node) patroniMembers(ctx context.Context) ([]apitype.ClusterMember, error) {
	if err := n.checkREST(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, showTimeout)
	defer cancel()
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(n.cl.RESTPort)) + "/cluster"
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := n.local.Do(req)
	if err != nil {
		return nil, fmt.Errorf("Patroni: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("Patroni: GET /cluster: %s", resp.Status)
	}
	var body struct {
		Members []struct {
			Name     string          `json:"name"`
			Role     string          `json:"role"`
			State    string          `json:"state"`
			Timeline int64           `json:"timeline"`
			Lag      json.RawMessage `json:"lag"`
		} `json:"members"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&body); err != nil {
		return nil, fmt.Errorf("Patroni: GET /cluster: %w", err)
	}
	out := []apitype.ClusterMember{}
	for _, m := range body.Members {
		cm := apitype.ClusterMember{Name: m.Name, Role: m.Role, State: m.State, Timeline: m.Timeline}
		// "lag" is a number of bytes, or "unknown".
		var lag int64
		if len(m.Lag) > 0 && json.Unmarshal(m.Lag, &lag) == nil {
			cm.LagBytes = &lag
		}
		out = append(out, cm)
	}
	return out, nil
}

func (n *Node) etcdHealth(ctx context.Context, ep string) error {
	ctx, cancel := context.WithTimeout(ctx, showTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "https://"+ep+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := n.etcd.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var h struct {
		Health string `json:"health"`
		Reason string `json:"reason"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&h); err != nil {
		return fmt.Errorf("GET /health: %w", err)
	}
	if resp.StatusCode != http.StatusOK || h.Health != "true" {
		return fmt.Errorf("unhealthy (%s) %s", resp.Status, h.Reason)
	}
	return nil
}

// checkREST refuses a REST port Patroni does not hold (restowner.go).
func (n *Node) checkREST() error {
	if n.c.PatroniPID == nil {
		return nil // tests: a fake Patroni
	}
	return restListenerIsPatroni(n.cl.RESTPort, n.c.PatroniPID())
}
