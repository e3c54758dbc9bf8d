package apitype

import "time"

// Growth methods reported by resize.
const (
	GrowOnline  = "online"  // resize2fs on the mounted filesystem
	GrowOffline = "offline" // PostgreSQL stopped, volume unmounted, e2fsck + resize2fs, remounted
)

// StorageInfo is the answer of GET /v1/storage.
type StorageInfo struct {
	Backend     string `json:"backend"` // fscrypt or gocryptfs
	Description string `json:"description"`
	// State is the data key's state (Available, Locked, Inaccessible).
	State      string `json:"state"`
	MountPoint string `json:"mount_point"`
	// SizeBytes, UsedBytes and FreeBytes describe the mounted filesystem
	// (with gocryptfs: the host filesystem holding the cipher directory).
	SizeBytes uint64 `json:"size_bytes"`
	UsedBytes uint64 `json:"used_bytes"`
	FreeBytes uint64 `json:"free_bytes"`
	// Image-backed fscrypt volumes.
	ImagePath           string `json:"image_path,omitempty"`
	ImageBytes          int64  `json:"image_bytes,omitempty"`
	ImageAllocatedBytes int64  `json:"image_allocated_bytes,omitempty"`
	LoopDevice          string `json:"loop_device,omitempty"`
	// StoragePath is the existing ext4 filesystem's directory (--storage-path).
	StoragePath string `json:"storage_path,omitempty"`
	// CipherDir, FUSEPID and FUSERestarts describe gocryptfs.
	CipherDir    string `json:"cipher_dir,omitempty"`
	FUSEPID      int    `json:"fuse_pid,omitempty"`
	FUSERestarts int    `json:"fuse_restarts"`
	// HostFreeBytes is what the filesystem holding the image or the cipher
	// directory has left.
	HostFreeBytes uint64 `json:"host_free_bytes,omitempty"`
	// Full names the filesystem that is full, "volume" or
	// "host_filesystem" (the one holding the image or cipher directory),
	// and FullDetail what to do; empty when neither is.
	Full       string `json:"full,omitempty"`
	FullDetail string `json:"full_detail,omitempty"`
	// Autogrow is pgshield.storage_autogrow; AutogrowNote says when it
	// cannot apply.
	Autogrow     bool        `json:"autogrow"`
	AutogrowNote string      `json:"autogrow_note,omitempty"`
	Resizable    bool        `json:"resizable"`
	LastGrow     *GrowRecord `json:"last_grow,omitempty"`
}

// GrowRecord describes one growth of the volume.
type GrowRecord struct {
	At              time.Time `json:"at"`
	FromBytes       int64     `json:"from_bytes"`
	ToBytes         int64     `json:"to_bytes"`
	Method          string    `json:"method"` // GrowOnline or GrowOffline
	Automatic       bool      `json:"automatic"`
	DowntimeSeconds float64   `json:"downtime_seconds"`
}

// StorageResizeRequest is the body of POST /v1/storage/resize.
type StorageResizeRequest struct {
	SizeBytes int64 `json:"size_bytes"`
}

// StorageResizeResult is the answer of POST /v1/storage/resize.
type StorageResizeResult struct {
	Grow    GrowRecord  `json:"grow"`
	Storage StorageInfo `json:"storage"`
}
