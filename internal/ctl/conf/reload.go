package conf

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/pgshield/pgshield/internal/config"
)

// ErrReloadRefused wraps every reason Reload keeps the configuration in
// force: the file does not decode or validate, or it changes what a
// reload cannot apply.
var ErrReloadRefused = errors.New("configuration reload refused")

// Reload reads the configuration file again (SIGHUP) and puts it in force
// if it is valid and changes only pgshield's own parameters; it returns
// the names of those that changed. check sees the new configuration and
// the changed names before anything is in force and may refuse; apply
// runs after, with the store unlocked (it hands the parameters to the
// parts that use them, which may read Get).
//
// Anything else is refused whole, and the configuration in force stays
// as it was: a file that is not JSON, has unknown fields or invalid
// values (config.Load decodes strictly and validates), or changes a field
// that init or a command of its own decides (listen, key, storage,
// certificate files, ...). The file is left as it is: it is the
// operator's to fix, and the next change pgshield saves replaces it with
// the configuration in force.
func (s *Store) Reload(check func(next *config.Config, changed []string) error, apply func(changed []string)) ([]string, error) {
	changed, err := s.reload(check)
	if err != nil {
		return nil, err
	}
	if len(changed) > 0 && apply != nil {
		apply(changed)
	}
	return changed, nil
}

func (s *Store) reload(check func(next *config.Config, changed []string) error) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next, err := config.Load(s.layout)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrReloadRefused, s.layout.ConfigFile(), err)
	}
	fields, err := changedFields(s.cfg, next)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReloadRefused, err)
	}
	if len(fields) > 0 {
		return nil, fmt.Errorf("%w: %s changed: set on init or by its own command (a reload applies only pgshield's parameters)",
			ErrReloadRefused, strings.Join(fields, ", "))
	}
	changed := changedParams(s.cfg.Parameters, next.Parameters)
	if len(changed) == 0 {
		return nil, nil
	}
	if check != nil {
		if err := check(next, changed); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrReloadRefused, err)
		}
	}
	s.cfg = next
	return changed, nil
}

// changedFields names the top-level fields of pgshield.json, other than
// parameters, whose values differ between cur and next.
func changedFields(cur, next *config.Config) ([]string, error) {
	a, err := fieldMap(cur)
	if err != nil {
		return nil, err
	}
	b, err := fieldMap(next)
	if err != nil {
		return nil, err
	}
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if k != "parameters" && string(a[k]) != string(b[k]) {
			out = append(out, k)
		}
	}
	return out, nil
}

func fieldMap(c *config.Config) (map[string]json.RawMessage, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	return m, json.Unmarshal(b, &m)
}

// changedParams names the parameters set, changed or unset from cur to
// next, sorted.
func changedParams(cur, next map[string]string) []string {
	var out []string
	for k, v := range next {
		if old, ok := cur[k]; !ok || old != v {
			out = append(out, k)
		}
	}
	for k := range cur {
		if _, ok := next[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}
