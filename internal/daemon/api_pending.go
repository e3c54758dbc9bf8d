package daemon

import (
	"context"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
)

// Until the storage refactor that owns key.go and storage.go lands, those
// files keep their own KeyInfo and StorageInfo (the same JSON as
// apitype's) and HTTP-shaped handlers; these methods adapt them to
// mgmt.Backend. TODO(architecture): fold into key.go and storage.go.

func toAPIKeyInfo(ki KeyInfo) apitype.KeyInfo {
	return apitype.KeyInfo{KeyState: apitype.KeyState(ki.KeyState), LastValidated: ki.LastValidated, LastError: ki.LastError,
		GraceSince: ki.GraceSince, Backend: ki.Backend, KeySource: ki.KeySource, KeyURI: ki.KeyURI,
		TotalBytes: ki.TotalBytes, FreeBytes: ki.FreeBytes}
}

// keyAnswer converts the answer of key.go's handlers.
func keyAnswer(v any, err error) (apitype.KeyInfo, error) {
	if err != nil {
		return apitype.KeyInfo{}, err
	}
	return toAPIKeyInfo(v.(KeyInfo)), nil
}

// Key reports the data key's state, source and backend.
func (d *Daemon) Key() apitype.KeyInfo { return toAPIKeyInfo(d.keyInfo()) }

// LockKey ends every session, stops PostgreSQL cleanly and removes the key
// from the kernel.
func (d *Daemon) LockKey() (apitype.KeyInfo, error) { return keyAnswer(d.lockKey(nil)) }

// UnlockKey unwraps the data key again, unlocks the volume and starts
// PostgreSQL.
func (d *Daemon) UnlockKey() (apitype.KeyInfo, error) { return keyAnswer(d.unlockKey(nil)) }

func toAPIStorageInfo(s StorageInfo) apitype.StorageInfo {
	out := apitype.StorageInfo{Backend: s.Backend, Description: s.Description, State: s.State, MountPoint: s.MountPoint,
		SizeBytes: s.SizeBytes, UsedBytes: s.UsedBytes, FreeBytes: s.FreeBytes,
		ImagePath: s.ImagePath, ImageBytes: s.ImageBytes, ImageAllocatedBytes: s.ImageAllocatedBytes, LoopDevice: s.LoopDevice,
		StoragePath: s.StoragePath, CipherDir: s.CipherDir, FUSEPID: s.FUSEPID, FUSERestarts: s.FUSERestarts,
		HostFreeBytes: s.HostFreeBytes, Autogrow: s.Autogrow, AutogrowNote: s.AutogrowNote, Resizable: s.Resizable}
	if s.LastGrow != nil {
		g := apitype.GrowRecord(*s.LastGrow)
		out.LastGrow = &g
	}
	return out
}

// Storage describes the volume for `pgshield storage show`.
func (d *Daemon) Storage(ctx context.Context) apitype.StorageInfo {
	return toAPIStorageInfo(d.storageInfo(ctx))
}

// ResizeStorage grows the volume to sizeBytes (rounded up to whole
// blocks); the answer says how and describes the volume after.
func (d *Daemon) ResizeStorage(sizeBytes int64) (apitype.StorageResizeResult, error) {
	if sizeBytes <= 0 {
		return apitype.StorageResizeResult{}, clienterr.New(apitype.CodeInvalid, "give the new size (size_bytes > 0)")
	}
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rec, err := d.growLocked(ctx, sizeBytes, false)
	if err != nil {
		return apitype.StorageResizeResult{}, err
	}
	return apitype.StorageResizeResult{Grow: apitype.GrowRecord(rec), Storage: toAPIStorageInfo(d.storageInfo(ctx))}, nil
}
