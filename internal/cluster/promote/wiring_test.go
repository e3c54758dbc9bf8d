package promote

import (
	"github.com/pgshield/pgshield/internal/ctl/keys"
	"github.com/pgshield/pgshield/internal/ctl/volume"
)

// The daemon's own volume and key controller are what Server takes: the
// wiring left (TODO(#18)) is starting it, not adapting them.
var (
	_ Volume = (*volume.AtRest)(nil)
	_ Keys   = (*keys.Controller)(nil)
)
