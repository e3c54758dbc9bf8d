//go:build !linux

package storage

import "context"

// Provision needs Linux; see the Linux documentation of this method.
func (v *Volume) Provision(ctx context.Context) error { return ErrUnsupported }

// Attach needs Linux.
func (v *Volume) Attach(ctx context.Context) error { return ErrUnsupported }

// Detach needs Linux.
func (v *Volume) Detach(ctx context.Context) error { return ErrUnsupported }

// Unlock needs Linux.
func (v *Volume) Unlock(key []byte) error { return ErrUnsupported }

// Lock needs Linux.
func (v *Volume) Lock() error { return ErrUnsupported }

// KeyStatus needs Linux.
func (v *Volume) KeyStatus() (present bool, err error) { return false, ErrUnsupported }

// Resize needs Linux.
func (v *Volume) Resize(ctx context.Context, newSize int64) error { return ErrUnsupported }

// Usage needs Linux.
func (v *Volume) Usage() (total, free uint64, err error) { return 0, 0, ErrUnsupported }

// NeedsGrow is always false without Linux.
func (v *Volume) NeedsGrow(threshold float64) bool { return false }

// Create needs Linux.
func (g *Gocryptfs) Create(ctx context.Context, key []byte) error { return ErrUnsupported }

// Open needs Linux.
func (g *Gocryptfs) Open(ctx context.Context, key []byte) error { return ErrUnsupported }

// Unmount needs Linux.
func (g *Gocryptfs) Unmount(ctx context.Context) error { return ErrUnsupported }

// ForceUnmount needs Linux.
func (g *Gocryptfs) ForceUnmount(ctx context.Context) error { return ErrUnsupported }

// Alive needs Linux.
func (g *Gocryptfs) Alive() (bool, error) { return false, ErrUnsupported }

// Usage needs Linux.
func (g *Gocryptfs) Usage() (total, free uint64, err error) { return 0, 0, ErrUnsupported }

// CheckStoragePath needs Linux.
func CheckStoragePath(path string) (string, error) { return "", ErrUnsupported }

// LoopDevice needs Linux.
func (v *Volume) LoopDevice(ctx context.Context) (string, error) { return "", ErrUnsupported }

func fileSize(path string) (size, allocated int64, err error) { return 0, 0, ErrUnsupported }

func fsSpace(path string) (total, avail int64, err error) { return 0, 0, ErrUnsupported }
