package apitype

import "time"

// Backup job states.
const (
	JobRunning   = "running"
	JobSucceeded = "succeeded"
	JobFailed    = "failed"
)

// BackupJob is a backup the daemon runs in the background: the answer of
// POST /v1/backups (just started) and of GET /v1/backups/job (the current
// or last one).
type BackupJob struct {
	ID string `json:"id"`
	// Type is what was asked for (full, diff, incr); once done, what
	// pgBackRest took (the first backup is always full).
	Type  string `json:"type"`
	State string `json:"state"` // JobRunning, JobSucceeded or JobFailed
	// Progress is the share of the cluster copied, in percent.
	Progress   float64    `json:"progress_percent"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	Label      string     `json:"label,omitempty"`
	Error      string     `json:"error,omitempty"`
}

// BackupCreateRequest is the body of POST /v1/backups; the body may be
// left out.
type BackupCreateRequest struct {
	Type string `json:"type,omitempty"` // full (default), diff or incr
}

// BackupList is the answer of GET /v1/backups.
type BackupList struct {
	Repository    string   `json:"repository"`
	Cipher        string   `json:"cipher"`
	RetentionDays int      `json:"retention_days"`
	WALMin        string   `json:"wal_min,omitempty"`
	WALMax        string   `json:"wal_max,omitempty"`
	Running       bool     `json:"backup_running"`
	Backups       []Backup `json:"backups"` // oldest first; never null
}

// Backup is one backup in the repository, as pgBackRest describes it.
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
	// the backup itself stores.
	Size     int64 `json:"size"`
	RepoSize int64 `json:"repo_size"`
	// WALStart and WALStop are the first and last WAL segment the backup
	// needs to be consistent; LSNStart and LSNStop the matching positions.
	WALStart string `json:"wal_start"`
	WALStop  string `json:"wal_stop"`
	LSNStart string `json:"lsn_start"`
	LSNStop  string `json:"lsn_stop"`
	// Error is set when pgBackRest found a problem in a copied file.
	Error bool `json:"error,omitempty"`
}

// ArchiveResult is the answer of POST /v1/backups/archive-wal.
type ArchiveResult struct {
	// WAL is the segment that held the last commit, now in the repository.
	WAL string `json:"wal"`
}
