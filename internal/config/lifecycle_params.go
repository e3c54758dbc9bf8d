package config

import (
	"errors"
	"log/slog"
	"time"
)

// lifecycleParams are the parameters of the daemon's own lifecycle: how a
// shutdown or restart ends sessions, and how much it logs (README
// "Running as a service"). They join the table at init, as alertParams do.
var lifecycleParams = []Param{
	{Name: "pgshield.shutdown_grace", Default: "30s", Check: checkShutdownGrace,
		Description: "On shutdown (SIGTERM, pgshield down) and pgshield restart, how long open sessions may go on to finish their work; those still open then are ended with 57P01. 0s ends them at once."},
	{Name: "pgshield.log_level", Default: "info", Allowed: []string{"debug", "info", "warn", "error"},
		Description: "Least level of the daemon's log lines (JSON, on its standard error or in log/pgshield.log); applies at once."},
}

func init() { gatewayParams = append(gatewayParams, lifecycleParams...) }

func checkShutdownGrace(v string) (string, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > time.Hour {
		return "", errors.New("use a duration from 0s (end sessions at once) to 1h, such as 30s")
	}
	return d.String(), nil
}

// ShutdownGrace is pgshield.shutdown_grace.
func (p Params) ShutdownGrace() time.Duration {
	d, err := time.ParseDuration(p.Values["pgshield.shutdown_grace"])
	if err != nil {
		return 30 * time.Second
	}
	return d
}

// LogLevel is pgshield.log_level as a slog level.
func (p Params) LogLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(p.Values["pgshield.log_level"])); err != nil {
		return slog.LevelInfo
	}
	return l
}
