package alerts

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/pgshield/pgshield/internal/alerting"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
)

// Suppressed alerts keep who they were about.
//
// A flood of one alert type (sources an attacker controls, names it makes
// up) empties that type's bucket, and the real trigger that comes next is
// suppressed with the flood. The alert.suppressed alert of the type
// therefore counts what it suppressed per source (the real peer, which no
// one can forge) and, under each source, per role, and each source or
// role new to it is audited at once. Bounded: maxSuppressedSources
// sources, maxSuppressedRoles roles under each; beyond, counted as
// unlisted. A flood's made-up role names fill its own sources' lists, not
// the real trigger's. The lists are JSON in Details (names stay exact,
// counts survive restarts).
//
// Sources are cheap (an IPv6 /64 each), so the lists fill: an unlisted
// source or role is still audited, in a small record of its own, within
// a budget per type (unlistedBurst at once, one per unlistedRefill after),
// one for sources and one for roles under a listed source (so that a
// flood's made-up names under its own sources cannot spend the budget of
// sources); past it, counted as unaudited.
const (
	maxSuppressedSources = 32
	maxSuppressedRoles   = 8
	unlistedBurst        = 256
	unlistedRefill       = 250 * time.Millisecond
)

// Details keys of an alert.suppressed alert.
const (
	detSupSources  = "suppressed_sources"
	detSupUnlisted = "suppressed_unlisted"
	// detSupUnaudited: unlisted ones past the audit budget.
	detSupUnaudited = "suppressed_unaudited"
)

// noSource names findings that have none (the catalog's privilege changes).
const noSource = "(none)"

type suppressedSource struct {
	N     int            `json:"n"`
	Roles map[string]int `json:"roles,omitempty"`
}

// suppressLocked counts f on its type's alert.suppressed alert.
func (c *Controller) suppressLocked(f alerting.Finding) []emitted {
	s := alerting.Finding{Type: alerting.TypeSuppressed, Key: "type=" + f.Type,
		Details: map[string]string{"suppressed_type": f.Type}}
	out := c.raiseLocked(s)
	a := c.findLocked(alerting.TypeSuppressed, s.Key)
	if a == nil {
		return out
	}
	src := f.Details["source"]
	if src == "" {
		src = f.Client
	}
	if src == "" {
		src = noSource
	}
	src, role := alerting.Bound(src, alerting.MaxName), alerting.Bound(f.User, alerting.MaxName)
	added, unlisted := countSuppressed(a, src, role)
	c.mu.dirty = true
	if unlisted != "" {
		if !c.takeUnlistedLocked(unlisted + "\x00" + f.Type) {
			n, _ := strconv.Atoi(a.Details[detSupUnaudited])
			a.Details[detSupUnaudited] = strconv.Itoa(n + 1)
			return out
		}
		fs := map[string]any{"alert_id": a.ID, "suppressed_type": f.Type, "source": src, "listed": false}
		if role != "" {
			fs["role"] = role
		}
		return append(out, emitted{ev: audit.Event{Type: a.Type, Outcome: audit.OutcomeFailure, User: role,
			Reason: "suppressed alert from a source or role past the lists", Fields: fs}, typ: a.Type, sev: a.Severity})
	}
	// What raiseLocked made of the alert predates the names: it records
	// them too.
	recorded := false
	for i := range out {
		if out[i].ev.Fields["alert_id"] == a.ID {
			out[i].ev, recorded = alertEvent(a), true
			if out[i].payload != nil {
				p := payloadOf(a)
				out[i].payload = &p
			}
		}
	}
	if added && !recorded {
		// A name seen for the first time is on record now, whatever
		// the flood does next.
		out = append(out, emitted{ev: alertEvent(a), typ: a.Type, sev: a.Severity})
	}
	return out
}

// findLocked returns the live (not dismissed) alert of typ and key.
func (c *Controller) findLocked(typ, key string) *apitype.Alert {
	k := typ + "\x00" + key
	for i := len(c.mu.alerts) - 1; i >= 0; i-- {
		if a := c.mu.alerts[i]; !a.Dismissed && alertKey(a) == k {
			return a
		}
	}
	return nil
}

// countSuppressed counts a suppressed finding from src as role on a; it
// reports whether src or role is new to the lists, and which one did not
// fit ("source", "role"; "" if both did).
func countSuppressed(a *apitype.Alert, src, role string) (added bool, unlisted string) {
	if a.Details == nil {
		a.Details = map[string]string{}
	}
	m := map[string]*suppressedSource{}
	_ = json.Unmarshal([]byte(a.Details[detSupSources]), &m)
	unlist := func(what string) {
		n, _ := strconv.Atoi(a.Details[detSupUnlisted])
		a.Details[detSupUnlisted] = strconv.Itoa(n + 1)
		unlisted = what
	}
	e, seen := m[src]
	if !seen || e == nil {
		if len(m) >= maxSuppressedSources {
			unlist("source")
			return false, unlisted
		}
		e = &suppressedSource{}
		m[src] = e
	}
	e.N++
	added = !seen
	if role != "" {
		if e.Roles == nil {
			e.Roles = map[string]int{}
		}
		if _, ok := e.Roles[role]; ok || len(e.Roles) < maxSuppressedRoles {
			added = added || !ok
			e.Roles[role]++
		} else {
			unlist("role")
		}
	}
	b, _ := json.Marshal(m)
	a.Details[detSupSources] = string(b)
	return added, unlisted
}

// takeUnlistedLocked takes a token from a budget of audited unlisted names
// ("source" or "role", NUL, the type: a bucket of its own beside the
// alerts').
func (c *Controller) takeUnlistedLocked(what string) bool {
	now := c.cfg.Now()
	k := "unlisted\x00" + what
	b, ok := c.mu.buckets[k]
	if !ok {
		b = &bucket{tokens: unlistedBurst, at: now}
		c.mu.buckets[k] = b
	}
	b.tokens = min(unlistedBurst, b.tokens+float64(now.Sub(b.at))/float64(unlistedRefill))
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
