package patroni

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// launchProbe drives Patroni 3.0.2's etcd3 leader update, as shipped and
// as launch.py patches it, against a fake etcd client, in the situation
// of a leader whose Patroni was paused past its lease while another node
// took the key: the shipped code puts the key unconditionally (the
// upstream bug), the patched one only in a transaction that fails while
// another node holds it.
const launchProbe = `
import runpy, sys, json
from patroni.dcs import etcd3, Leader
from patroni.utils import Retry
shipped = etcd3.Etcd3._update_leader
runpy.run_path(sys.argv[1], run_name='pgshield_launch_test')
patched = etcd3.Etcd3._update_leader
assert patched is not shipped and getattr(etcd3.Etcd3, 'pgshield_patched', False)

class Client:
    def __init__(self, txn):
        self.calls, self.txn, self._kv_cache = [], txn, None
    def put(self, *a, **k):
        self.calls.append(['put'] + list(a[:3]))
        return {'header': {'revision': '7'}}
    def call_rpc(self, method, fields, retry=None):
        self.calls.append([method, fields])
        return self.txn

def dcs(client, cached_lease):
    d = object.__new__(etcd3.Etcd3)
    d._retry = Retry(deadline=5, max_tries=1)
    d._lease, d._name, d._client = 'NEW', 'n1', client
    d._base_path, d._citus_group = '/pgshield/prod', None
    d._do_refresh_lease = lambda *a, **k: None
    import threading, time
    d._cluster_thread_lock = threading.Lock()
    d._cluster_valid_till = time.time() + 60
    class C: pass
    c = C(); c.leader = Leader(1, cached_lease, None)
    d._cluster = c
    return d

out = {}
held = {'succeeded': False, 'header': {'revision': '9'}, 'responses': [{'response_txn': {'succeeded': False}}]}
c = Client(held); out['shipped'] = [shipped(dcs(c, 'OLD')), c.calls]
c = Client(held); out['held'] = [patched(dcs(c, 'OLD')), c.calls]
c = Client({'succeeded': True, 'header': {'revision': '9'}}); out['own'] = [patched(dcs(c, 'OLD')), len(c.calls)]
c = Client({'succeeded': False, 'header': {'revision': '9'}, 'responses': [{'response_txn': {'succeeded': True}}]})
out['free'] = [patched(dcs(c, 'OLD')), len(c.calls)]
c = Client(held); out['same'] = [patched(dcs(c, 'NEW')), len(c.calls)]
print(json.dumps(out))
`

// TestLauncherFix runs launch.py's fix against Debian's Patroni (skipped
// where Patroni 3.0.2 is not installed).
func TestLauncherFix(t *testing.T) {
	py := "/usr/bin/python3"
	if out, err := exec.Command(py, "-I", "-c", "import patroni.version as v; print(v.__version__)").Output(); err != nil || strings.TrimSpace(string(out)) != "3.0.2" {
		t.Skipf("Patroni 3.0.2 is not installed (%s %v)", out, err)
	}
	dir := t.TempDir()
	launch := filepath.Join(dir, "launch.py")
	if err := os.WriteFile(launch, Launcher, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, "-I", "-c", launchProbe, launch).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	got := string(out)
	for _, want := range []string{
		// Shipped: the key is put unconditionally over the other node's.
		`"shipped": [true, [["put", "/pgshield/prod/leader", "n1", "NEW"]]]`,
		// Patched: one transaction, refreshing the key only while it names
		// this node, else creating it only if absent; refused: not leader.
		`"held": [false, [["/kv/txn", {"compare": [{"key": "L3Bnc2hpZWxkL3Byb2QvbGVhZGVy"`,
		`"target": "VALUE", "value": "bjE="}]`,
		`"failure": [{"request_txn": {"compare": [{"key": "L3Bnc2hpZWxkL3Byb2QvbGVhZGVy", "target": "CREATE", "create_revision": "0"}]`,
		`"own": [true, 1]`, `"free": [true, 1]`, `"same": [true, 0]`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("want %s in\n%s", want, got)
		}
	}
}
