package volume

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
)

// withMounts points mountsFile at a file of the test's; lines is its text.
func withMounts(t *testing.T) (set func(lines string)) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mounts")
	old := mountsFile
	mountsFile = p
	t.Cleanup(func() { mountsFile = old })
	return func(lines string) {
		if err := os.WriteFile(p, []byte(lines), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFailedReadOnly(t *testing.T) {
	set := withMounts(t)
	set("/dev/loop3 /srv/my\\040data/volume ext4 rw,relatime,errors=remount-ro,emergency_ro 0 0\n" +
		"/dev/loop4 /srv/b/volume ext4 ro,relatime 0 0\n" +
		"/dev/loop5 /srv/c/volume ext4 rw,relatime,errors=remount-ro 0 0\n" +
		"/dev/loop6 /srv/e/volume ext4 rw,relatime,errors=remount-ro,shutdown 0 0\n")
	for mount, want := range map[string]bool{"/srv/my data/volume": true, "/srv/b/volume": true, "/srv/c/volume": false,
		"/srv/d/volume": false, "/srv/e/volume": true} {
		if got := failedReadOnly(mount); got != want {
			t.Errorf("failedReadOnly(%q) = %v; want %v", mount, got, want)
		}
	}
}

// A volume whose ext4 gave up (the host filesystem under its image was
// full) is unmounted, checked and mounted again once the host has room;
// not while it is still full, and a healthy volume is left alone.
func TestRepairIfFailed(t *testing.T) {
	fake := growableFake()
	d := testController(t, fake, apitype.KeyAvailable)
	a := testAtRest(t, fake)
	if err := a.Create(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.atRest = a
	set := withMounts(t)
	mount := d.layout.VolumeMount()
	healthy := "/dev/loop9 " + mount + " ext4 rw,relatime,errors=remount-ro 0 0\n"
	failed := "/dev/loop9 " + mount + " ext4 rw,relatime,errors=remount-ro,emergency_ro 0 0\n"
	ctx := context.Background()

	set(healthy)
	d.repairIfFailed(ctx, false)
	if len(d.server.calls) != 0 {
		t.Fatalf("healthy volume: server calls %q; want none", d.server.calls)
	}
	set(failed)
	d.repairIfFailed(ctx, true)
	if len(d.server.calls) != 0 || slices.Contains(fake.Calls(), "Detach") {
		t.Fatalf("host still full: server calls %q, volume calls %v; want nothing done", d.server.calls, fake.Calls())
	}
	fake.onDetach = func() { set("") }
	d.repairIfFailed(ctx, false)
	want := []string{"Quiesce: terminating connection because the storage is being repaired", "Resume"}
	if !slices.Equal(d.server.calls, want) {
		t.Errorf("server calls = %q; want %q", d.server.calls, want)
	}
	calls := fake.Calls()
	i, j := slices.Index(calls, "Detach"), slices.Index(calls, "Resize")
	k := j + slices.Index(calls[max(j, 0):], "Unlock")
	if i < 0 || j < i || k < j || fake.resizedTo != fake.size {
		t.Errorf("volume calls = %v (resized to %d); want Detach, Resize to its own size (the offline check), then Unlock", calls, fake.resizedTo)
	}
	var repaired bool
	for _, e := range d.events {
		repaired = repaired || (e.Type == "storage.repair" && e.Outcome == "success")
	}
	if !repaired {
		t.Errorf("events %+v; want a storage.repair success", d.events)
	}
}
