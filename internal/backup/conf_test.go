package backup

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/keys"
)

func settings() Settings {
	return Settings{RepoPath: "/var/lib/pgshield/backups", PGData: "/var/lib/pgshield/volume/data/pgdata",
		SocketDir: "/var/lib/pgshield/run/pg", PGPort: 5432, WorkDir: "/var/lib/pgshield/volume/data/backup", ProcessMax: 2}
}

func TestNewPassphrase(t *testing.T) {
	a, err := NewPassphrase()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewPassphrase()
	if len(a) != 64 || bytes.Equal(a, b) {
		t.Fatalf("passphrases %q, %q: want 64 characters, different each time", a, b)
	}
	if err := checkPassphrase(a); err != nil {
		t.Fatalf("checkPassphrase(NewPassphrase()) = %v", err)
	}
	if raw, err := base64.RawURLEncoding.DecodeString(string(a)); err != nil || len(raw) != passphraseBytes {
		t.Fatalf("passphrase is not %d bytes of base64: %v", passphraseBytes, err)
	}
}

func TestRender(t *testing.T) {
	pass := []byte("p4ss-phrase_0123456789abcdef")
	conf, err := Render(settings(), pass)
	if err != nil {
		t.Fatal(err)
	}
	s := string(conf)
	for _, want := range []string{
		"[global]\n", "repo1-path=/var/lib/pgshield/backups\n", "repo1-cipher-type=aes-256-cbc\n",
		"repo1-cipher-pass=p4ss-phrase_0123456789abcdef\n", "spool-path=/var/lib/pgshield/volume/data/backup/spool\n",
		"lock-path=/var/lib/pgshield/volume/data/backup/lock\n", "log-path=/var/lib/pgshield/volume/data/backup/log\n",
		"process-max=2\n", "start-fast=y\n", "archive-async=y\n",
		"[pgshield]\n", "pg1-path=/var/lib/pgshield/volume/data/pgdata\n", "pg1-socket-path=/var/lib/pgshield/run/pg\n",
		"pg1-port=5432\n", "pg1-user=postgres\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("Render() lacks %q:\n%s", want, s)
		}
	}
	if strings.Count(s, "p4ss-phrase") != 1 {
		t.Errorf("the passphrase appears %d times; want once", strings.Count(s, "p4ss-phrase"))
	}
}

func TestRenderRejects(t *testing.T) {
	good := []byte("p4ss-phrase_0123456789abcdef")
	for _, tc := range []struct {
		name string
		mod  func(*Settings)
		pass []byte
	}{
		{name: "newline in repo smuggles an option", mod: func(s *Settings) { s.RepoPath = "/x\nrepo1-cipher-type=none" }},
		{name: "relative path", mod: func(s *Settings) { s.PGData = "pgdata" }},
		{name: "unclean path", mod: func(s *Settings) { s.WorkDir = "/a/../b" }},
		{name: "trailing space", mod: func(s *Settings) { s.SocketDir = "/run/pg " }},
		{name: "bad port", mod: func(s *Settings) { s.PGPort = 0 }},
		{name: "process-max", mod: func(s *Settings) { s.ProcessMax = 0 }},
		{name: "short passphrase", pass: []byte("short")},
		{name: "passphrase with newline", pass: []byte("p4ss-phrase_01234\nrepo1-path=/tmp")},
		{name: "passphrase with space", pass: []byte("p4ss phrase_0123456789abcdef")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := settings()
			if tc.mod != nil {
				tc.mod(&s)
			}
			p := good
			if tc.pass != nil {
				p = tc.pass
			}
			if conf, err := Render(s, p); err == nil {
				t.Fatalf("Render() = %q; want an error", conf)
			}
		})
	}
}

func TestArchiveCommand(t *testing.T) {
	got := ArchiveCommand("/data/it's 100%/volume/data/backup/pgbackrest.conf")
	want := `/usr/bin/pgbackrest '--config=/data/it'\''s 100%%/volume/data/backup/pgbackrest.conf' --stanza=pgshield archive-push %p`
	if got != want {
		t.Fatalf("ArchiveCommand() = %s\nwant %s", got, want)
	}
}

func TestWrappedPassphrase(t *testing.T) {
	ctx := context.Background()
	k, err := keys.Open(ctx, "base64key://"+base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	path := filepath.Join(t.TempDir(), "backup-key.json")
	if err := CreateWrappedPassphrase(ctx, k, path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("envelope mode = %v, %v; want 0600", fi.Mode(), err)
	}
	pass, err := UnwrapPassphrase(ctx, k, path)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, pass) {
		t.Fatalf("the envelope holds the passphrase in clear")
	}
	// Another key cannot unwrap it.
	other, _ := keys.Open(ctx, "base64key://"+base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{8}, 32)))
	defer other.Close()
	if _, err := UnwrapPassphrase(ctx, other, path); err == nil {
		t.Fatalf("another key unwrapped the passphrase")
	}
	// A volume key's envelope is not a passphrase.
	w, _ := k.WrapKey(ctx, keys.PurposeVolume, bytes.Repeat([]byte{1}, 64))
	vpath := filepath.Join(t.TempDir(), "volume-key.json")
	if err := w.Save(vpath); err != nil {
		t.Fatal(err)
	}
	if _, err := UnwrapPassphrase(ctx, k, vpath); err == nil || !strings.Contains(err.Error(), "purpose") {
		t.Fatalf("UnwrapPassphrase(volume key) error = %v", err)
	}
}

func TestParseProgressAndLabel(t *testing.T) {
	for line, want := range map[string]float64{
		"2026-11-25 14:37:57.424 P01 DETAIL: backup file /tmp/pg/data/base/5/1259 (96KB, 12.34%) checksum 347fc8f2": 12.34,
		"P02 DETAIL: restore file /d/pgdata/global/pg_control (8KB, 100.00%) checksum 1":                            100,
		"P01 DETAIL: backup file /tmp/x (with, comma) (8B, 7%) checksum 1":                                          7,
	} {
		if got, ok := ParseProgress(line); !ok || got != want {
			t.Errorf("ParseProgress(%q) = %v, %v; want %v", line, got, ok, want)
		}
	}
	for _, line := range []string{"P00 INFO: backup start archive = 0000000100", "P01 DETAIL: backup file /x (8B, 250%) checksum", ""} {
		if p, ok := ParseProgress(line); ok {
			t.Errorf("ParseProgress(%q) = %v; want none", line, p)
		}
	}
	if l, ok := ParseLabel("2026-11-25 14:37:57.636 P00   INFO: new backup label = 20261125-143629F_20261125-143755D"); !ok || l != "20261125-143629F_20261125-143755D" {
		t.Errorf("ParseLabel = %q, %v", l, ok)
	}
	if l, ok := ParseLabel("P00 INFO: new backup label = ../../etc"); ok {
		t.Errorf("ParseLabel accepted %q", l)
	}
}
