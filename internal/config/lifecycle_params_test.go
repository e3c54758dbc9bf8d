package config

import (
	"log/slog"
	"testing"
	"time"
)

func TestLifecycleParams(t *testing.T) {
	p, err := ResolveParams(nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.ShutdownGrace() != 30*time.Second || p.LogLevel() != slog.LevelInfo {
		t.Errorf("defaults: grace %s, level %s; want 30s, INFO", p.ShutdownGrace(), p.LogLevel())
	}
	p, err = ResolveParams(map[string]string{"pgshield.shutdown_grace": "0", "pgshield.log_level": "WARN"})
	if err != nil {
		t.Fatal(err)
	}
	if p.ShutdownGrace() != 0 || p.LogLevel() != slog.LevelWarn || p.Values["pgshield.shutdown_grace"] != "0s" {
		t.Errorf("grace %s (%q), level %s; want 0s, WARN", p.ShutdownGrace(), p.Values["pgshield.shutdown_grace"], p.LogLevel())
	}
	for _, bad := range []map[string]string{
		{"pgshield.shutdown_grace": "-1s"},
		{"pgshield.shutdown_grace": "2h"},
		{"pgshield.shutdown_grace": "soon"},
		{"pgshield.log_level": "trace"},
		{"pgshield.log_level": "info+4"},
	} {
		if _, err := ResolveParams(bad); err == nil {
			t.Errorf("ResolveParams(%v) accepted", bad)
		}
	}
}
