package link

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// The peer socket directory belongs to PostgreSQL's user once the link
// runs, so whoever runs as that user (Patroni, PostgreSQL, anything they
// start) can rename entries in it. The root daemon therefore never
// follows a path there after the handover: the directory is opened
// without following a symlink, made root's and 0700 while the sockets are
// created, each socket is chmodded and chowned through a descriptor of
// the socket file itself, and the directory is handed to PostgreSQL's
// user last.

// openPeerDir makes or opens the peer socket directory and makes it
// root's (when the link runs as root) and 0700. An existing directory is
// refused when it is a symlink, group- or world-writable, or owned by
// anyone but root, PostgreSQL's user or (when not root) the link's own
// user. The caller closes the directory (handPeerDir).
func (n *Node) openPeerDir() (*os.File, error) {
	d := n.cfg.PeerSocketDir
	// Its parent, if missing, as MkdirAll would make it (root's, 0755).
	if err := os.MkdirAll(filepath.Dir(d), 0o755); err != nil {
		return nil, fmt.Errorf("link: peer socket directory: %w", err)
	}
	if err := unix.Mkdir(d, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("link: peer socket directory: %w", err)
	}
	fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("link: peer socket directory %s (not a directory, or a symlink): %w", d, err)
	}
	dir := os.NewFile(uintptr(fd), d)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		_ = dir.Close()
		return nil, fmt.Errorf("link: peer socket directory: %w", err)
	}
	euid := os.Geteuid()
	ownerOK := st.Uid == 0 || int(st.Uid) == n.cfg.SocketUID || (euid != 0 && int(st.Uid) == euid)
	if !ownerOK || st.Mode&0o022 != 0 {
		_ = dir.Close()
		return nil, fmt.Errorf("link: peer socket directory %s is owned by uid %d with mode %04o: want root's or uid %d's, writable by its owner only", d, st.Uid, st.Mode&0o7777, n.cfg.SocketUID)
	}
	if euid == 0 {
		// Root's until every socket is made: nobody else can rename
		// anything in it meanwhile.
		if err := unix.Fchown(fd, 0, 0); err != nil {
			_ = dir.Close()
			return nil, fmt.Errorf("link: peer socket directory: %w", err)
		}
	}
	if err := unix.Fchmod(fd, 0o700); err != nil {
		_ = dir.Close()
		return nil, fmt.Errorf("link: peer socket directory: %w", err)
	}
	return dir, nil
}

// handPeerDir gives the directory to PostgreSQL's user (0700) and closes
// it: the last step, once its sockets are made.
func (n *Node) handPeerDir(dir *os.File) error {
	defer dir.Close()
	fd := int(dir.Fd())
	if os.Geteuid() == 0 {
		if err := unix.Fchown(fd, n.cfg.SocketUID, n.cfg.SocketGID); err != nil {
			return fmt.Errorf("link: peer socket directory: %w", err)
		}
	}
	if err := unix.Fchmod(fd, 0o700); err != nil {
		return fmt.Errorf("link: peer socket directory: %w", err)
	}
	return nil
}

// listenUnix makes the peer socket name in dir: a stale file is removed
// after a dial shows nobody serves it, and the socket, 0600, belongs to
// PostgreSQL's user. Its mode and owner are set through an O_PATH
// descriptor of the socket itself, opened without following a symlink.
func (n *Node) listenUnix(dir *os.File, name string) (net.Listener, error) {
	path := filepath.Join(dir.Name(), name)
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		_ = c.Close()
		return nil, fmt.Errorf("link: %s is already in use", path)
	}
	dfd := int(dir.Fd())
	if err := unix.Unlinkat(dfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("link: stale %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("link: %w", err)
	}
	if err := n.ownSocket(dfd, name); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("link: %s: %w", path, err)
	}
	return ln, nil
}

func (n *Node) ownSocket(dfd int, name string) error {
	fd, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("not the socket just made (mode %o)", st.Mode)
	}
	// chmod has no descriptor form for an O_PATH descriptor; its
	// /proc/self/fd link names the inode itself (as glibc's fchmodat
	// with AT_SYMLINK_NOFOLLOW does).
	if err := unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), 0o600); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if err := unix.Fchownat(fd, "", n.cfg.SocketUID, n.cfg.SocketGID, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}
