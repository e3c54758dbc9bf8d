package node

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// restListenerIsPatroni checks that the process listening on
// 127.0.0.1:port (the node's network namespace, which /proc/net/tcp
// shows) is Patroni, pid, before pgshield trusts its answers or sends it
// the REST password: any local user can bind the port while Patroni is
// down (restarting, or kept from binding by that user).
func restListenerIsPatroni(port, pid int) error {
	if pid <= 0 {
		return fmt.Errorf("Patroni is not running")
	}
	inode, err := loopbackListener(port)
	if err != nil {
		return err
	}
	want := "socket:[" + inode + "]"
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		return fmt.Errorf("Patroni (pid %d) is gone: refusing to talk to whatever holds 127.0.0.1:%d", pid, port)
	}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", e.Name())); err == nil && l == want {
			return nil
		}
	}
	return fmt.Errorf("127.0.0.1:%d is held by a process other than Patroni (pid %d): refusing to talk to it", port, pid)
}

// loopbackListener is the socket inode listening on 127.0.0.1:port.
func loopbackListener(port int) (string, error) {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return "", err
	}
	defer f.Close()
	local := fmt.Sprintf("0100007F:%04X", port)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fs := strings.Fields(sc.Text())
		if len(fs) >= 10 && fs[1] == local && fs[3] == "0A" {
			return fs[9], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("nothing listens on 127.0.0.1:%d (Patroni's REST API)", port)
}
