package apitype

import "time"

// Ban is a source the gateway refuses at accept after repeated failed
// logins (`pgshield ban list`): an IPv4 /32 or an IPv6 /64.
type Ban struct {
	Source   string    `json:"source"`
	BannedAt time.Time `json:"banned_at"`
	Until    time.Time `json:"until"`
	// Count is the number of bans of this source in a row; each doubles
	// the time.
	Count int `json:"count"`
}
