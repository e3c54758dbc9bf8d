package fence

import "github.com/pgshield/pgshield/internal/gateway"

// The gateway takes a Fence as its Config.Leadership as it is, without
// importing this package (its dependency graph stays free of cluster code).
var _ gateway.Leadership = (*Fence)(nil)
