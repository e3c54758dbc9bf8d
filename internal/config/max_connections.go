package config

import (
	"errors"
	"strconv"
	"strings"
)

// AutoMaxConnections is ThreatParams.MaxConnections for
// pgshield.max_connections = auto: the gateway's session cap follows
// PostgreSQL's max_connections (internal/threat.DeriveMaxSessions).
const AutoMaxConnections = -1

// checkMaxConnections takes auto or a count.
func checkMaxConnections(v string) (string, error) {
	if strings.EqualFold(strings.TrimSpace(v), "auto") {
		return "auto", nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 1000000 {
		return "", errors.New("use auto (follow PostgreSQL's max_connections) or a whole number from 0 (no limit) to 1000000")
	}
	return strconv.Itoa(n), nil
}

// maxConnections reads a checked pgshield.max_connections.
func maxConnections(v string) int {
	if v == "auto" {
		return AutoMaxConnections
	}
	n, _ := strconv.Atoi(v)
	return n
}
