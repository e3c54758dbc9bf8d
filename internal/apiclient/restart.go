package apiclient

import (
	"context"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
)

// Restart restarts PostgreSQL (the sessions first get
// pgshield.shutdown_grace to finish) and answers once it is up again.
// The answer can take the grace and a start: wait gives the time beyond
// the usual timeout.
func (c *Client) Restart(ctx context.Context, wait time.Duration) (*apitype.RestartResult, error) {
	hc := *c.http
	hc.Timeout += wait
	lc := *c
	lc.http = &hc
	return call[apitype.RestartResult](ctx, &lc, "POST", "/v1/restart", nil)
}
