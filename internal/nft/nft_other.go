//go:build !linux

package nft

import (
	"errors"
	"fmt"
)

// Option changes how Apply and Remove reach the kernel.
type Option func(*options)

type options struct{ netNS int }

// WithNetNS selects a network namespace; Linux only.
func WithNetNS(fd int) Option { return func(o *options) { o.netNS = fd } }

// Apply needs Linux's nftables.
func Apply(table string, r Rules, opts ...Option) error {
	return fmt.Errorf("nft: %w on this OS", errors.ErrUnsupported)
}

// Remove needs Linux's nftables.
func Remove(table string, opts ...Option) error {
	return fmt.Errorf("nft: %w on this OS", errors.ErrUnsupported)
}
