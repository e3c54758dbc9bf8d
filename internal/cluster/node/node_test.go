package node

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/cluster/fence"
	"github.com/pgshield/pgshield/internal/config"
)

func TestReadSecrets(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, FileSecrets)
	for name, body := range map[string]string{
		"not JSON": "replication=x", "short": `{"replication":"short","rewind":"0123456789abcdef"}`,
		"missing": `{"replication":"0123456789abcdef"}`,
	} {
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := ReadSecrets(p)
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "0123456789abcdef") {
			t.Errorf("%s: the error shows a secret: %v", name, err)
		}
	}
	s := NewSecrets()
	b, _ := json.Marshal(s)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSecrets(p)
	if err != nil || got != s {
		t.Fatalf("ReadSecrets: %+v %v", got, err)
	}
}

// TestRoleStatements: the roles get SCRAM verifiers, never the
// passwords, and the rewind role only pg_rewind's four functions.
func TestRoleStatements(t *testing.T) {
	s := NewSecrets()
	stmts, err := RoleStatements(s)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(stmts, ";\n")
	if strings.Contains(all, s.Replication) || strings.Contains(all, s.Rewind) {
		t.Fatal("a password reaches SQL")
	}
	if strings.Count(all, "PASSWORD 'SCRAM-SHA-256$4096:") != 2 {
		t.Errorf("want two SCRAM verifiers:\n%s", all)
	}
	if !strings.Contains(all, "CREATE ROLE "+config.ReplicationRole+" LOGIN REPLICATION ") ||
		strings.Contains(all, "SUPERUSER") || strings.Count(all, "GRANT EXECUTE ON FUNCTION pg_catalog.") != 4 {
		t.Errorf("unexpected statements:\n%s", all)
	}
}

func TestLineLog(t *testing.T) {
	var b strings.Builder
	l := &lineLog{log: slog.New(slog.NewTextHandler(&b, nil))}
	_, _ = l.Write([]byte("first line\nsecond "))
	_, _ = l.Write([]byte("half\n" + strings.Repeat("x", 2*maxLine) + "\n"))
	out := b.String()
	if !strings.Contains(out, `msg="first line"`) || !strings.Contains(out, `msg="second half"`) {
		t.Errorf("lines: %s", out)
	}
	if strings.Contains(out, strings.Repeat("x", maxLine+1)) || !strings.Contains(out, strings.Repeat("x", maxLine)) {
		t.Error("a long line is not cut at maxLine")
	}
}

// TestShow: Patroni's GET /cluster (lag a number or "unknown") becomes
// the members; an unreachable Patroni and etcd are errors in the answer,
// not a failure.
func TestShow(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/cluster" || r.Method != "GET" {
			http.Error(w, "no", 404)
			return
		}
		_, _ = w.Write([]byte(`{"members":[{"name":"n1","role":"leader","state":"running","timeline":3},
			{"name":"n2","role":"sync_standby","state":"streaming","timeline":3,"lag":0},
			{"name":"n3","role":"replica","state":"stopped","lag":"unknown"}],"scope":"prod"}`))
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	f, err := fence.New(fence.Config{Endpoints: []string{"https://" + deadAddr}, TLS: testTLS(t), Scope: "prod", Node: "n1",
		TTL: 10 * time.Second, LoopWait: 2 * time.Second, Margin: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{cl: &config.Cluster{Scope: "prod", Node: "n1", RESTPort: p, Etcd: []string{deadAddr}}, fence: f,
		local: &http.Client{Timeout: time.Second}, etcd: &http.Client{Timeout: time.Second}}
	info := n.Show(context.Background())
	if len(info.Members) != 3 || info.Members[1].Role != "sync_standby" || info.Members[1].LagBytes == nil ||
		*info.Members[1].LagBytes != 0 || info.Members[2].LagBytes != nil || info.Members[0].Timeline != 3 {
		t.Errorf("members: %+v", info.Members)
	}
	if info.Leadership.MayWrite || len(info.Etcd) != 1 || info.Etcd[0].Healthy || info.Etcd[0].Error == "" {
		t.Errorf("leadership %+v etcd %+v", info.Leadership, info.Etcd)
	}
	srv.Close()
	info = n.Show(context.Background())
	if info.PatroniError == "" || len(info.Members) != 0 {
		t.Errorf("Patroni down: %+v", info)
	}
}
