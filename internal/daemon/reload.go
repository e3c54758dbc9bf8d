package daemon

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/ctl/params"
)

// reloadOnHUP reloads pgshield.json on every SIGHUP until ctx ends. (The
// certificate controller reloads its files on the same signal, on its own
// channel: signal.Notify hands each its copy.)
func (d *Daemon) reloadOnHUP(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			_ = d.reloadConfig("SIGHUP")
		}
	}
}

// reloadConfig reads pgshield.json again and applies the parameters it
// changed; a file that does not decode, does not validate or changes
// what a reload cannot apply is refused whole, the configuration in force
// is kept, and the refusal is logged and audited (config.reload_failed,
// with the reason: the file holds no secret, and the reason is redacted
// like every API error).
func (d *Daemon) reloadConfig(trigger string) error {
	check := params.CheckReload
	if d.node != nil {
		check = params.CheckReloadCluster
	}
	changed, err := d.conf.Reload(check, d.params.Reloaded)
	if err != nil {
		d.Log.Error("Configuration reload refused; the configuration in force is kept.", "trigger", trigger, "error", err)
		d.audit.Record(audit.Event{Type: "config.reload_failed", Outcome: audit.OutcomeFailure, Reason: audit.Redact(err.Error()),
			Fields: map[string]any{"trigger": trigger, "file": d.Layout.ConfigFile()}})
		return err
	}
	d.Log.Info("Configuration reloaded.", "trigger", trigger, "changed", changed)
	d.audit.Record(audit.Event{Type: "config.reload", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"trigger": trigger, "changed": changed}})
	return nil
}
