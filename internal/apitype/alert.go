package apitype

import "time"

// Alert is one security alert (`pgshield alert list|show`). Names from the
// wire (user, database, application) are bounded to 128 bytes and may hold
// any character: JSON escapes them; tables must quote them.
type Alert struct {
	// ID is random, given when the alert is first raised, and never
	// changes.
	ID       string `json:"id"`
	Type     string `json:"type"`
	Severity string `json:"severity"` // Low, Medium, High
	Title    string `json:"title"`
	// FirstSeen is when it was raised; LastSeen when it was last raised
	// again (repeats within an hour count here instead of making new
	// alerts).
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	Count       int       `json:"count"`
	Client      string    `json:"client,omitempty"`
	User        string    `json:"user,omitempty"`
	Database    string    `json:"database,omitempty"`
	Application string    `json:"application,omitempty"`
	// Details are the facts the webhook also gets.
	Details map[string]string `json:"details,omitempty"`
	// Evidence (statements, messages) stays on the server.
	Evidence    map[string]string `json:"evidence,omitempty"`
	Dismissed   bool              `json:"dismissed"`
	DismissedAt *time.Time        `json:"dismissed_at,omitempty"`
}

// Decoy kinds.
const (
	DecoyRole  = "role"
	DecoyTable = "table"
)

// Decoy is a lure: any login attempt as a decoy role, or any read of a
// decoy table, raises a High alert (`pgshield decoy`).
type Decoy struct {
	Kind string `json:"kind"` // role or table
	// Name is the role's name, or the table's schema-qualified name.
	Name string `json:"name"`
	// Database is a table's database.
	Database  string    `json:"database,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// State is "ok", or what the last check found wrong with it in
	// PostgreSQL ("missing", "renamed", "can log in with a changed
	// password", ...).
	State string `json:"state"`
}

// DecoyRequest creates a decoy.
type DecoyRequest struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Database of a table; empty: postgres.
	Database string `json:"database,omitempty"`
}
