package daemon

import (
	"context"
	"fmt"
)

// component is one step of a server's start, and what undoes it.
type component struct {
	name string
	// start runs in list order; nil means nothing to start.
	start func(ctx context.Context) error
	// stop runs in reverse order, and only if start succeeded; nil means
	// nothing to stop.
	stop func()
}

// startAll starts the components in order. If one fails, those already
// started are stopped in reverse order and the error says which failed.
// Otherwise it returns the function that stops them all, in reverse order.
func startAll(ctx context.Context, comps []component) (stopAll func(), err error) {
	started := 0
	stopAll = func() {
		for i := started - 1; i >= 0; i-- {
			if comps[i].stop != nil {
				comps[i].stop()
			}
		}
	}
	for _, c := range comps {
		if c.start != nil {
			if err := c.start(ctx); err != nil {
				stopAll()
				return nil, fmt.Errorf("%s: %w", c.name, err)
			}
		}
		started++
	}
	return stopAll, nil
}
