package backup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// info-multi.json is real output of pgBackRest 2.45: a full, another full,
// a diff on it and an incr on the diff.
func TestParseInfoMulti(t *testing.T) {
	info, err := ParseInfo(readTestdata(t, "info-multi.json"), Stanza)
	if err != nil {
		t.Fatalf("ParseInfo(info-multi.json) error = %v", err)
	}
	if info.Cipher != "aes-256-cbc" {
		t.Errorf("Cipher = %q; want aes-256-cbc", info.Cipher)
	}
	if info.WALMin != "000000010000000000000001" || info.WALMax != "00000001000000000000000C" {
		t.Errorf("WAL range = %s..%s", info.WALMin, info.WALMax)
	}
	if info.BackupRunning {
		t.Errorf("BackupRunning = true; the lock was not held")
	}
	want := []struct {
		label, typ, prior string
		start, stop       int64
	}{
		{"20261125-143623F", "full", "", 1795617383, 1795617385},
		{"20261125-143629F", "full", "", 1795617389, 1795617391},
		{"20261125-143629F_20261125-143755D", "diff", "20261125-143629F", 1795617475, 1795617477},
		{"20261125-143629F_20261125-143758I", "incr", "20261125-143629F_20261125-143755D", 1795617478, 1795617480},
	}
	if len(info.Backups) != len(want) {
		t.Fatalf("got %d backups; want %d", len(info.Backups), len(want))
	}
	for i, w := range want {
		b := info.Backups[i]
		if b.Label != w.label || b.Type != w.typ || b.Prior != w.prior ||
			!b.Start.Equal(time.Unix(w.start, 0)) || !b.Stop.Equal(time.Unix(w.stop, 0)) {
			t.Errorf("backup %d = %+v; want %+v", i, b, w)
		}
		if b.Size <= 0 || b.RepoSize <= 0 || b.WALStart == "" || b.WALStop == "" || b.LSNStart == "" || b.LSNStop == "" {
			t.Errorf("backup %d lacks sizes, WAL or LSN: %+v", i, b)
		}
		if b.Start.Location() != time.UTC {
			t.Errorf("backup %d start is not UTC", i)
		}
	}
	if got := info.Backups[0]; got.Size != 23074476 || got.RepoSize != 4558848 || got.WALStart != "000000010000000000000002" || got.LSNStop != "0/2000100" {
		t.Errorf("first backup = %+v", got)
	}
}

func TestParseInfoStatuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		data    string
		wantErr error
		errHas  string
		backups int
	}{
		{name: "no stanza path", data: string(readTestdata(t, "info-no-stanza.json")), wantErr: ErrNoStanza},
		{name: "stanza not listed", data: `[{"name":"other","status":{"code":0,"message":"ok"},"backup":[]}]`, wantErr: ErrNoStanza},
		{name: "empty array", data: `[]`, wantErr: ErrNoStanza},
		{name: "no valid backups", data: `[{"name":"pgshield","cipher":"aes-256-cbc","status":{"code":2,"message":"no valid backups","lock":{"backup":{"held":true}}},"backup":[]}]`},
		// A wrong passphrase: pgBackRest quotes the undecryptable file,
		// binary included.
		{name: "wrong passphrase", data: string(readTestdata(t, "info-wrong-passphrase.json")), errHas: "status 99"},
		{name: "not JSON", data: `ERROR: [031]: option 'stanza' cannot be set multiple times`, errHas: "decoding"},
		{name: "trailing", data: `[] []`, errHas: "trailing"},
		{name: "object", data: `{"name":"pgshield"}`, errHas: "decoding"},
		{name: "missing label", data: `[{"name":"pgshield","status":{"code":0},"backup":[{"type":"full","timestamp":{"start":1,"stop":2}}]}]`, errHas: "malformed"},
		{name: "stop before start", data: `[{"name":"pgshield","status":{"code":0},"backup":[{"label":"x","timestamp":{"start":5,"stop":2}}]}]`, errHas: "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := ParseInfo([]byte(tc.data), Stanza)
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ParseInfo() error = %v; want %v", err, tc.wantErr)
				}
			case tc.errHas != "":
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("ParseInfo() error = %v; want one containing %q", err, tc.errHas)
				}
				for _, r := range err.Error() {
					if r == '\uFFFD' || (r < ' ' && r != '\t') {
						t.Fatalf("error holds unprintable %q: %q", r, err.Error())
					}
				}
			default:
				if err != nil {
					t.Fatalf("ParseInfo() error = %v", err)
				}
				if len(info.Backups) != tc.backups {
					t.Fatalf("got %d backups; want %d", len(info.Backups), tc.backups)
				}
				if !info.BackupRunning {
					t.Fatalf("BackupRunning = false; the lock was held")
				}
			}
		})
	}
}

func TestParseInfoTooLarge(t *testing.T) {
	if _, err := ParseInfo(make([]byte, maxInfoSize+1), Stanza); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("ParseInfo(huge) error = %v", err)
	}
}

func TestChooseBackup(t *testing.T) {
	at := func(s int64) time.Time { return time.Unix(1795617000+s, 0).UTC() }
	bs := []Backup{
		{Label: "A-F", Type: "full", Start: at(0), Stop: at(10)},
		{Label: "B-D", Type: "diff", Start: at(100), Stop: at(110)},
		{Label: "C-I", Type: "incr", Start: at(200), Stop: at(210)},
	}
	for _, tc := range []struct {
		name      string
		label     string
		target    time.Time
		wantLabel string
		wantType  string
		wantErr   error
	}{
		{name: "latest", wantLabel: "C-I", wantType: RestoreDefault},
		{name: "label only", label: "B-D", wantLabel: "B-D", wantType: RestoreImmediate},
		{name: "target picks newest before", target: at(150), wantLabel: "B-D", wantType: RestoreTime},
		{name: "target after all", target: at(5000), wantLabel: "C-I", wantType: RestoreTime},
		// Stop is truncated to the second: one second later is the first safe target.
		{name: "target one second after stop", target: at(111), wantLabel: "B-D", wantType: RestoreTime},
		{name: "target at stop uses previous", target: at(110), wantLabel: "A-F", wantType: RestoreTime},
		{name: "target before all", target: at(5), wantErr: ErrTargetTooEarly},
		{name: "label and target", label: "A-F", target: at(150), wantLabel: "A-F", wantType: RestoreTime},
		{name: "label and target before it", label: "C-I", target: at(150), wantErr: ErrTargetTooEarly},
		{name: "unknown label", label: "nope", wantErr: ErrUnknownLabel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ChooseBackup(bs, tc.label, tc.target)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ChooseBackup(%q, %v) error = %v; want %v", tc.label, tc.target, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ChooseBackup(%q, %v) error = %v", tc.label, tc.target, err)
			}
			if p.Backup.Label != tc.wantLabel || p.Type != tc.wantType {
				t.Fatalf("ChooseBackup(%q, %v) = %s/%s; want %s/%s", tc.label, tc.target, p.Backup.Label, p.Type, tc.wantLabel, tc.wantType)
			}
			if tc.wantType == RestoreTime && !p.Target.Equal(tc.target) {
				t.Fatalf("target = %v; want %v", p.Target, tc.target)
			}
		})
	}
	if _, err := ChooseBackup(nil, "", time.Time{}); !errors.Is(err, ErrNoBackups) {
		t.Fatalf("ChooseBackup(none) error = %v; want ErrNoBackups", err)
	}
	_, err := ChooseBackup(bs, "", at(5))
	if err == nil || !strings.Contains(err.Error(), at(11).Format(time.RFC3339)) {
		t.Fatalf("too-early error %v does not name the earliest restorable time", err)
	}
}

func TestTargetString(t *testing.T) {
	loc := time.FixedZone("X", 2*3600)
	got := TargetString(time.Date(2026, 11, 25, 16, 36, 36, 257650000, loc))
	if want := "2026-11-25 14:36:36.25765+00"; got != want {
		t.Fatalf("TargetString = %q; want %q", got, want)
	}
}

func TestCleanMessage(t *testing.T) {
	got := CleanMessage("bad\n\x00\x01file p\uFFFD\u00e9 ok\t")
	if got != "bad file p\u00e9 ok" {
		t.Fatalf("CleanMessage = %q", got)
	}
	if long := CleanMessage(strings.Repeat("x", 1000)); len(long) != 403 {
		t.Fatalf("CleanMessage(1000 x) has %d bytes; want 400 and an ellipsis", len(long))
	}
}

func FuzzParseInfo(f *testing.F) {
	for _, name := range []string{"info-multi.json", "info-no-stanza.json", "info-wrong-passphrase.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`[{"name":"pgshield","status":{"code":0},"backup":[{"label":"x","timestamp":{"start":1,"stop":2}}]}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := ParseInfo(data, Stanza)
		if err != nil {
			return
		}
		for _, b := range info.Backups {
			if b.Label == "" || b.Stop.Before(b.Start) {
				t.Fatalf("ParseInfo accepted a malformed backup %+v", b)
			}
		}
		// Whatever it accepted, a restore plan can be made or refused.
		_, _ = ChooseBackup(info.Backups, "", time.Time{})
	})
}
