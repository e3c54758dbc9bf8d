package link

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// checkSharedParams is TestRealHADaemons' phase for what the cluster
// shares besides the network policy (internal/ctl/params/shared.go,
// internal/ctl/principals/shared.go), with both daemons up, primary the
// leader and standby its synchronous standby:
//   - a shared pgshield.* parameter set on the primary is in force on the
//     standby within seconds (measured), and the standby refuses to set
//     one; a node-local one (pgshield.log_level) is set on either node
//     alone;
//   - an administrator principal made on the primary is in the standby's
//     pgshield_guard.admin_roles (PostgreSQL's own SHOW) within seconds;
//   - rows forged in pgshield.cluster_config by the superuser, and an old
//     authentic row put back, are applied nowhere;
//   - after a switchover the new primary keeps roles the administrator
//     made from taking the principal over (42501), then the roles are
//     switched back.
//
// The administrator logs in with password from namespace client,
// trusting rootCA.
func checkSharedParams(t *testing.T, ctx context.Context, primary, standby *daemonNode, client, password, rootCA string) {
	t.Helper()
	const shared, local = "pgshield.bruteforce_max_failures", "pgshield.log_level"
	value := func(n *daemonNode, name string) (string, string) {
		out, err := n.cli(ctx, time.Minute, "parameter", "show", name, "-o", "json")
		var v struct{ Value string }
		if err != nil || json.Unmarshal([]byte(out), &v) != nil {
			return "", fmt.Sprintf("%v %s", err, out)
		}
		return v.Value, out
	}
	set := func(n *daemonNode, name, v string) {
		t.Helper()
		if out, err := n.cli(ctx, time.Minute, "parameter", "set", name, v); err != nil {
			t.Fatalf("%s: parameter set %s %s: %v\n%s", n.name, name, v, err, out)
		}
	}
	reaches := func(n *daemonNode, name, want string) time.Duration {
		t.Helper()
		start := time.Now()
		waitFor(t, fmt.Sprintf("%s = %s on %s", name, want, n.name), 30*time.Second, nil, func() (bool, string) {
			v, s := value(n, name)
			return v == want, s
		})
		return time.Since(start)
	}
	before, s := value(standby, shared)
	localP, sp := value(primary, local)
	localS, ss := value(standby, local)
	if before == "" || localP == "" || localS == "" {
		t.Fatalf("parameter show: %s %s %s", s, sp, ss)
	}

	// A shared parameter: set on the primary, in force on the standby.
	set(primary, shared, "7")
	took := reaches(standby, shared, "7")
	t.Logf("shared param: %.2f s (%s on %s -> in force on %s)", took.Seconds(), shared, primary.name, standby.name)

	// Node-local: set on the primary, it stays there, while a shared one
	// set after it arrives; set on the standby, it is done there alone.
	set(primary, local, "error")
	set(primary, shared, "8")
	reaches(standby, shared, "8")
	if v, s := value(standby, local); v != localS {
		t.Errorf("the primary's node-local %s reached %s: %s", local, standby.name, s)
	}
	set(standby, local, "warn")
	if v, s := value(primary, local); v != "error" {
		t.Errorf("the standby's node-local %s reached %s: %s", local, primary.name, s)
	}
	set(standby, local, localS)
	set(primary, local, localP)

	// The standby refuses a shared one, and keeps the cluster's value.
	if out, err := standby.cli(ctx, time.Minute, "parameter", "set", shared, "9"); err == nil || !strings.Contains(out, "standby") {
		t.Errorf("%s: parameter set %s on the standby = %v %s; want it refused (a standby)", standby.name, shared, err, out)
	}
	if v, s := value(standby, shared); v != "8" {
		t.Errorf("%s after the refused set: %s", standby.name, s)
	}

	// An administrator principal made on the primary is protected on the
	// standby too.
	const admin = "Ops.Shared@Contoso.com"
	adminRoles := func(n *daemonNode) (bool, string) {
		out, err := n.sql(ctx, "SHOW pgshield_guard.admin_roles")
		return err == nil && strings.Contains(out, `"`+admin+`"`), fmt.Sprintf("%q %v", out, err)
	}
	asked := time.Now()
	if out, err := primary.cli(ctx, 2*time.Minute, "principal", "create", "--name", admin, "--object-id", "oid-ops-shared", "--admin"); err != nil {
		t.Fatalf("%s: principal create --admin: %v\n%s", primary.name, err, out)
	}
	made := time.Now()
	if ok, s := adminRoles(primary); !ok {
		t.Fatalf("%s: the new administrator principal is not in its own pgshield_guard.admin_roles: %s", primary.name, s)
	}
	waitFor(t, "the administrator principal in "+standby.name+"'s pgshield_guard.admin_roles", 60*time.Second, nil, func() (bool, string) { return adminRoles(standby) })
	// principal create returns once the primary's PostgreSQL has the list
	// (through Patroni's next cycle); the standby's may take it first.
	t.Logf("shared admin list: %.2f s after principal create --admin on %s returned (it took %.2f s) -> in %s's pgshield_guard.admin_roles",
		time.Since(made).Seconds(), primary.name, made.Sub(asked).Seconds(), standby.name)

	// Forged and replayed rows. The superuser on the primary's socket
	// (what a compromised PostgreSQL can do) keeps an authentic row of
	// now (8), lets the primary publish 9, then puts the old row back;
	// then writes its own bodies, at higher versions, without the key.
	oldRow, err := primary.sql(ctx, "SELECT version || ',' || encode(body, 'hex') || ',' || encode(mac, 'hex') FROM pgshield.cluster_config WHERE name = 'parameter set'")
	parts := strings.Split(oldRow, ",")
	if err != nil || len(parts) != 3 {
		t.Fatalf("reading the shared parameter row: %v %q", err, oldRow)
	}
	set(primary, shared, "9")
	reaches(standby, shared, "9")
	refusals := func(n *daemonNode) int {
		log := n.daemonLog(1 << 24)
		return strings.Count(log, "A shared parameter set was not applied.") + strings.Count(log, "A shared administrator list was not applied.")
	}
	refusedBefore := refusals(standby)
	for _, q := range []string{
		fmt.Sprintf("UPDATE pgshield.cluster_config SET version = %s, body = decode('%s', 'hex'), mac = decode('%s', 'hex') WHERE name = 'parameter set'", parts[0], parts[1], parts[2]),
		`UPDATE pgshield.cluster_config SET version = version + 5, body = convert_to('{"parameters":{"pgshield.bruteforce_max_failures":"1000","require_secure_transport":"off"}}', 'UTF8') WHERE name = 'parameter set'`,
		`UPDATE pgshield.cluster_config SET version = version + 5, body = convert_to('{"admin_principals":[]}', 'UTF8') WHERE name = 'administrator list'`,
	} {
		if out, err := primary.sql(ctx, q); err != nil {
			t.Fatalf("tampering: %v %s", err, out)
		}
		time.Sleep(3 * time.Second) // three polls
		for _, n := range []*daemonNode{primary, standby} {
			if v, s := value(n, shared); v != "9" {
				t.Errorf("%s applied a forged or replayed parameter row: %s", n.name, s)
			}
			if v, s := value(n, "require_secure_transport"); v != "on" {
				t.Errorf("%s applied a forged parameter row: %s", n.name, s)
			}
			if ok, s := adminRoles(n); !ok {
				t.Errorf("%s applied a forged administrator list: %s", n.name, s)
			}
		}
	}
	if refusals(standby) < refusedBefore+2 {
		t.Errorf("%s did not log its refusal of the forged rows (MAC)", standby.name)
	}
	// The primary's next change is above the forged versions: applied.
	set(primary, shared, before)
	reaches(standby, shared, before)

	// The new primary protects the principal made on the old one: a role
	// the administrator made may not alter it.
	switchover(t, ctx, primary, standby)
	var conn *pgx.Conn
	waitFor(t, "a login through "+standby.name+"'s gateway after the switchover", time.Minute, nil, func() (bool, string) {
		var err error
		conn, err = pgx.ConnectConfig(ctx, gatewayConfig(t, client, []string{standby.ip}, password, rootCA, ""))
		return err == nil, fmt.Sprint(err)
	})
	for _, q := range []string{`ALTER ROLE "` + admin + `" NOLOGIN`, `GRANT "` + admin + `" TO pgadmin`, `DROP ROLE "` + admin + `"`} {
		_, err := conn.Exec(ctx, q)
		// The detail is the one of pgshield_guard.admin_roles' check.
		if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "42501" || !strings.Contains(pe.Detail, "server administrator") {
			t.Errorf("%s on the new primary %s: %v; want 42501 from pgshield_guard's administrator list", q, standby.name, err)
		}
	}
	conn.Close(ctx)
	switchover(t, ctx, standby, primary)
	if out, err := primary.cli(ctx, 2*time.Minute, "principal", "delete", "--name", admin); err != nil {
		t.Fatalf("%s: principal delete: %v\n%s", primary.name, err, out)
	}
	waitFor(t, "the deleted principal off "+standby.name+"'s list", 60*time.Second, nil, func() (bool, string) {
		ok, s := adminRoles(standby)
		return !ok, s
	})
}

// switchover makes to the leader in place of from, and waits until from
// streams from it as its synchronous standby and Patroni says so.
func switchover(t *testing.T, ctx context.Context, from, to *daemonNode) {
	t.Helper()
	if out, err := from.cli(ctx, 3*time.Minute, "cluster", "switchover", "--to", to.name); err != nil || !strings.Contains(out, "to "+to.name) {
		t.Fatalf("cluster switchover to %s: %v\n%s", to.name, err, out)
	}
	waitFor(t, from.name+" streaming as "+to.name+"'s synchronous standby", 3*time.Minute, nil, func() (bool, string) {
		out, err := to.sql(ctx, "SELECT application_name || ' ' || state || ' ' || sync_state FROM pg_catalog.pg_stat_replication")
		return err == nil && strings.Contains(out, from.name+" streaming sync"), fmt.Sprintf("%q %v", out, err)
	})
	waitFor(t, "cluster show: "+to.name+" leader, "+from.name+" synchronous standby", time.Minute, nil, func() (bool, string) {
		out, err := to.cli(ctx, time.Minute, "cluster", "show", "-o", "json")
		var info struct{ Members []struct{ Name, Role string } }
		if err != nil || json.Unmarshal([]byte(out), &info) != nil {
			return false, fmt.Sprintf("%v %s", err, out)
		}
		roles := map[string]string{}
		for _, m := range info.Members {
			roles[m.Name] = m.Role
		}
		return roles[to.name] == "leader" && roles[from.name] == "sync_standby", out
	})
}
