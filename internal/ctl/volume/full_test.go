package volume

import (
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
)

// checkFull names the full filesystem (the volume or the one under its
// image), records it once when it becomes full and once when it has room
// again, and storage show says it.
func TestCheckFull(t *testing.T) {
	const mib, gib = 1 << 20, 1 << 30
	fake := &fakeBackend{unlocked: true, image: "/srv/pg/storage/volume.img", size: 256 * mib, alloc: 200 * mib,
		total: 256 * mib, free: 100 * mib, hostTotal: 10 * gib, hostAvail: 5 * gib}
	tc := testController(t, fake, apitype.KeyAvailable)
	events := func() []audit.Event {
		tc.mu.Lock()
		defer tc.mu.Unlock()
		out := tc.events
		tc.events = nil
		return out
	}
	step := func(name string, free uint64, hostAvail int64, wantFull string, wantTypes ...string) {
		t.Helper()
		fake.free, fake.hostAvail = free, hostAvail
		tc.checkFull()
		var types []string
		for _, e := range events() {
			types = append(types, e.Type+"/"+stringField(e.Fields["filesystem"]))
			if e.Type == "storage.full" && (e.Outcome != audit.OutcomeFailure || e.Reason == "") {
				t.Errorf("%s: %+v; want a failure with a reason", name, e)
			}
		}
		if strings.Join(types, ",") != strings.Join(wantTypes, ",") {
			t.Errorf("%s: events %v; want %v", name, types, wantTypes)
		}
		if info := tc.Info(t.Context()); info.Full != wantFull || (wantFull != "") != (info.FullDetail != "") {
			t.Errorf("%s: storage show full = %q (%q); want %q", name, info.Full, info.FullDetail, wantFull)
		}
	}
	step("room", 100*mib, 5*gib, "")
	step("volume full", 2*mib, 5*gib, FullVolume, "storage.full/volume")
	step("still full: not recorded again", 1*mib, 5*gib, FullVolume)
	step("grown", 200*mib, 5*gib, "", "storage.full_cleared/volume")
	// The host filesystem first: growing the volume would not help.
	step("host full", 200*mib, 1*mib, FullHost, "storage.full/host_filesystem")
	step("both full: the host is named", 0, 1*mib, FullHost)
	step("host freed, volume full", 0, 5*gib, FullVolume, "storage.full_cleared/host_filesystem", "storage.full/volume")
	// Locked: the volume is not looked at.
	tc.keys.state = apitype.KeyLocked
	fake.free = 200 * mib
	tc.checkFull()
	if ev := events(); len(ev) != 0 {
		t.Errorf("checkFull while locked recorded %+v", ev)
	}
}

func stringField(v any) string {
	s, _ := v.(string)
	return s
}

// A host filesystem says where it is, and what to do, in the detail.
func TestFullnessDetail(t *testing.T) {
	fake := &fakeBackend{image: "/srv/pg/storage/volume.img", total: 1 << 30, free: 1 << 29, hostTotal: 1 << 30, hostAvail: 0}
	which, detail := fullness(fake)
	if which != FullHost || !strings.Contains(detail, "/srv/pg/storage") || !strings.Contains(detail, "free space there") {
		t.Errorf("fullness() = %q, %q; want the host filesystem of /srv/pg/storage", which, detail)
	}
	fake.hostAvail, fake.free = 1<<29, 0
	if which, detail := fullness(fake); which != FullVolume || !strings.Contains(detail, "storage resize") {
		t.Errorf("fullness() = %q, %q; want the volume, with resize", which, detail)
	}
}
