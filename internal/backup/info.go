package backup

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"
)

// Stanza is the name of pgshield's one stanza in every repository.
const Stanza = "pgshield"

// maxInfoSize bounds the JSON ParseInfo accepts; a repository with years of
// daily backups lists in well under a megabyte.
const maxInfoSize = 16 << 20

// Sentinel errors callers branch on.
var (
	// ErrNoStanza: the repository holds no stanza yet (no backup was ever
	// taken and the stanza was not created).
	ErrNoStanza = errors.New("the backup repository is not set up yet")
	// ErrNoBackups: the repository has no backup to restore from.
	ErrNoBackups = errors.New("the repository holds no backup yet (take one with 'pgshield backup create')")
	// ErrUnknownLabel: no backup has the label asked for.
	ErrUnknownLabel = errors.New("no such backup")
	// ErrTargetTooEarly: the target time is before the end of every
	// eligible backup, so no backup can be recovered to it.
	ErrTargetTooEarly = errors.New("the target time is before the end of the oldest backup")
)

// Backup is one backup set of the repository.
type Backup struct {
	// Label is pgBackRest's name of the backup, e.g. 20261125-143629F or
	// 20261125-143629F_20261125-143755D.
	Label string `json:"label"`
	// Type is full, diff or incr.
	Type string `json:"type"`
	// Prior is the backup a diff or incr builds on.
	Prior string    `json:"prior,omitempty"`
	Start time.Time `json:"start"`
	Stop  time.Time `json:"stop"`
	// Size is the size of the cluster the backup restores; RepoSize what
	// the backup itself stores (compressed, encrypted, only changed files
	// for diff and incr).
	Size     int64 `json:"size"`
	RepoSize int64 `json:"repo_size"`
	// WALStart and WALStop are the first and last WAL segment the backup
	// needs to be consistent; LSNStart and LSNStop the matching positions.
	WALStart string `json:"wal_start"`
	WALStop  string `json:"wal_stop"`
	LSNStart string `json:"lsn_start"`
	LSNStop  string `json:"lsn_stop"`
	// Error is set when pgBackRest found a problem in a copied file, such
	// as a page checksum failure.
	Error bool `json:"error,omitempty"`
}

// EarliestTarget is the earliest recovery target time this backup can
// reach. pgBackRest records the stop time in whole seconds, truncated; the
// backup is consistent only once its last WAL is replayed, which happened
// before the next second began.
func (b Backup) EarliestTarget() time.Time { return b.Stop.Add(time.Second) }

// Info is what the repository holds for the stanza.
type Info struct {
	Cipher string `json:"cipher"`
	// Backups are listed oldest first.
	Backups []Backup `json:"backups"`
	// WALMin and WALMax are the oldest and newest archived WAL segments.
	WALMin string `json:"wal_min,omitempty"`
	WALMax string `json:"wal_max,omitempty"`
	// BackupRunning: a backup or expire holds the stanza's lock.
	BackupRunning bool `json:"backup_running"`
}

// The JSON of `pgbackrest info --output=json` (format of pgBackRest 2.45),
// only the fields used here.
type infoStatus struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Lock    struct {
		Backup struct {
			Held bool `json:"held"`
		} `json:"backup"`
	} `json:"lock"`
}

type infoStanza struct {
	Name    string     `json:"name"`
	Cipher  string     `json:"cipher"`
	Status  infoStatus `json:"status"`
	Archive []struct {
		Min string `json:"min"`
		Max string `json:"max"`
	} `json:"archive"`
	Repo []struct {
		Status infoStatus `json:"status"`
	} `json:"repo"`
	Backup []struct {
		Label   string  `json:"label"`
		Type    string  `json:"type"`
		Prior   *string `json:"prior"`
		Error   *bool   `json:"error"`
		Archive struct {
			Start *string `json:"start"`
			Stop  *string `json:"stop"`
		} `json:"archive"`
		Info struct {
			Size       int64 `json:"size"`
			Repository struct {
				Delta int64 `json:"delta"`
			} `json:"repository"`
		} `json:"info"`
		LSN struct {
			Start string `json:"start"`
			Stop  string `json:"stop"`
		} `json:"lsn"`
		Timestamp struct {
			Start int64 `json:"start"`
			Stop  int64 `json:"stop"`
		} `json:"timestamp"`
	} `json:"backup"`
}

// pgBackRest's stanza status codes (see its info command's documentation).
const (
	statusOK             = 0
	statusMissingStanza  = 1
	statusNoValidBackups = 2
)

// ParseInfo decodes the output of `pgbackrest info --output=json` and
// returns the stanza's backups. A repository without the stanza gives
// ErrNoStanza; one whose stanza has no backup yet an Info with none. Any
// other status (for instance a passphrase that does not open the
// repository) is an error quoting pgBackRest's message, cleaned of the
// binary it may carry.
func ParseInfo(data []byte, stanza string) (*Info, error) {
	if len(data) > maxInfoSize {
		return nil, fmt.Errorf("pgbackrest info: output exceeds %d bytes", maxInfoSize)
	}
	// pgBackRest quotes an unreadable file's bytes in its messages without
	// escaping control characters, which JSON forbids in strings; outside
	// strings a space is as good as any of them.
	data = bytes.Map(func(r rune) rune {
		if r < ' ' {
			return ' '
		}
		return r
	}, data)
	dec := json.NewDecoder(bytes.NewReader(data))
	var stanzas []infoStanza
	if err := dec.Decode(&stanzas); err != nil {
		return nil, fmt.Errorf("pgbackrest info: decoding its JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("pgbackrest info: trailing data after the JSON")
	}
	var st *infoStanza
	for i := range stanzas {
		if stanzas[i].Name == stanza {
			st = &stanzas[i]
			break
		}
	}
	if st == nil {
		return nil, fmt.Errorf("%w (stanza %q not listed)", ErrNoStanza, stanza)
	}
	switch st.Status.Code {
	case statusOK, statusNoValidBackups:
	case statusMissingStanza:
		return nil, ErrNoStanza
	default:
		msg := st.Status.Message
		for _, r := range st.Repo {
			if r.Status.Code != statusOK {
				msg = r.Status.Message
				break
			}
		}
		return nil, fmt.Errorf("pgbackrest info: the repository cannot be read (status %d): %s", st.Status.Code, CleanMessage(msg))
	}
	info := &Info{Cipher: st.Cipher, BackupRunning: st.Status.Lock.Backup.Held}
	for _, a := range st.Archive {
		if info.WALMin == "" || (a.Min != "" && a.Min < info.WALMin) {
			info.WALMin = a.Min
		}
		if a.Max > info.WALMax {
			info.WALMax = a.Max
		}
	}
	for _, b := range st.Backup {
		if b.Label == "" || b.Timestamp.Stop < b.Timestamp.Start {
			return nil, fmt.Errorf("pgbackrest info: malformed backup entry %q", CleanMessage(b.Label))
		}
		out := Backup{
			Label: b.Label, Type: b.Type,
			Start: time.Unix(b.Timestamp.Start, 0).UTC(), Stop: time.Unix(b.Timestamp.Stop, 0).UTC(),
			Size: b.Info.Size, RepoSize: b.Info.Repository.Delta,
			LSNStart: b.LSN.Start, LSNStop: b.LSN.Stop,
		}
		if b.Prior != nil {
			out.Prior = *b.Prior
		}
		if b.Error != nil {
			out.Error = *b.Error
		}
		if b.Archive.Start != nil {
			out.WALStart = *b.Archive.Start
		}
		if b.Archive.Stop != nil {
			out.WALStop = *b.Archive.Stop
		}
		info.Backups = append(info.Backups, out)
	}
	return info, nil
}

// CleanMessage makes text from pgBackRest fit for an error message: only
// printable characters (an unreadable info file is quoted as binary), at
// most 400 of them.
func CleanMessage(s string) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n >= 400 {
			b.WriteString("...")
			break
		}
		switch {
		case r == '\n' || r == '\t':
			b.WriteByte(' ')
		case r == unicode.ReplacementChar || !unicode.IsPrint(r):
			continue
		default:
			b.WriteRune(r)
		}
		n++
	}
	return strings.TrimSpace(b.String())
}

// Restore types, as pgBackRest names them.
const (
	// RestoreDefault recovers to the end of the archived WAL.
	RestoreDefault = "default"
	// RestoreImmediate stops as soon as the backup is consistent.
	RestoreImmediate = "immediate"
	// RestoreTime stops before the first commit after a time.
	RestoreTime = "time"
)

// Plan is what a restore will do.
type Plan struct {
	Backup Backup
	// Type is RestoreDefault, RestoreImmediate or RestoreTime.
	Type string
	// Target is the recovery target time for RestoreTime.
	Target time.Time
}

// ChooseBackup decides which backup a restore starts from (backups oldest
// first, as ParseInfo lists them):
//
//   - label and target: that backup, recovered to target, which must not
//     be before the backup's end;
//   - target only: the newest backup that ended before target;
//   - label only: that backup, recovered only to its end (immediate);
//   - neither: the newest backup, recovered to the end of the archive.
func ChooseBackup(backups []Backup, label string, target time.Time) (Plan, error) {
	if len(backups) == 0 {
		return Plan{}, ErrNoBackups
	}
	hasTarget := !target.IsZero()
	if label != "" {
		for _, b := range backups {
			if b.Label != label {
				continue
			}
			if !hasTarget {
				return Plan{Backup: b, Type: RestoreImmediate}, nil
			}
			if target.Before(b.EarliestTarget()) {
				return Plan{}, fmt.Errorf("%w: backup %s ended at %s; the earliest time it restores to is %s",
					ErrTargetTooEarly, b.Label, b.Stop.Format(time.RFC3339), b.EarliestTarget().Format(time.RFC3339))
			}
			return Plan{Backup: b, Type: RestoreTime, Target: target}, nil
		}
		labels := make([]string, len(backups))
		for i, b := range backups {
			labels[i] = b.Label
		}
		return Plan{}, fmt.Errorf("%w %q (the repository holds %s)", ErrUnknownLabel, label, strings.Join(labels, ", "))
	}
	if !hasTarget {
		return Plan{Backup: backups[len(backups)-1], Type: RestoreDefault}, nil
	}
	var best *Backup
	for i := range backups {
		if b := &backups[i]; !target.Before(b.EarliestTarget()) && (best == nil || b.Stop.After(best.Stop)) {
			best = b
		}
	}
	if best == nil {
		first := backups[0]
		for _, b := range backups[1:] {
			if b.Stop.Before(first.Stop) {
				first = b
			}
		}
		return Plan{}, fmt.Errorf("%w (%s ended at %s); the earliest time to restore to is %s",
			ErrTargetTooEarly, first.Label, first.Stop.Format(time.RFC3339), first.EarliestTarget().Format(time.RFC3339))
	}
	return Plan{Backup: *best, Type: RestoreTime, Target: target}, nil
}
