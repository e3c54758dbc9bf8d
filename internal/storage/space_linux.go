package storage

import (
	"io/fs"

	"golang.org/x/sys/unix"
)

// fileSize returns a file's length and the bytes the host has allocated
// for it (an image is sparse).
func fileSize(path string) (size, allocated int64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return st.Size, st.Blocks * 512, nil
}

// fsSpace returns the size of the filesystem holding path and the space it
// has available to unprivileged writers.
func fsSpace(path string) (total, avail int64, err error) {
	var s unix.Statfs_t
	if err := unix.Statfs(path, &s); err != nil {
		return 0, 0, &fs.PathError{Op: "statfs", Path: path, Err: err}
	}
	return int64(s.Blocks) * s.Bsize, int64(s.Bavail) * s.Bsize, nil
}
