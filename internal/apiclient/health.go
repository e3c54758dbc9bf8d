package apiclient

import (
	"context"

	"github.com/pgshield/pgshield/internal/apitype"
)

// Health returns the server's overall health and its conditions.
func (c *Client) Health(ctx context.Context) (*apitype.Health, error) {
	return call[apitype.Health](ctx, c, "GET", "/v1/health", nil)
}
