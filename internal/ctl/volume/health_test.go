package volume

import (
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
)

func TestVolumeHealth(t *testing.T) {
	const gib = 1 << 30
	names := func(h []apitype.HealthCondition) map[string]string {
		m := map[string]string{}
		for _, c := range h {
			m[c.Name] = c.Severity
		}
		return m
	}
	for _, tc := range []struct {
		name string
		b    *fakeBackend
		want map[string]string
	}{
		{"roomy", &fakeBackend{total: 10 * gib, free: 5 * gib, size: 10 * gib, alloc: 5 * gib, hostTotal: 100 * gib, hostAvail: 50 * gib}, map[string]string{}},
		{"volume 91% full", &fakeBackend{total: 100 * gib, free: 9 * gib, size: 100 * gib, alloc: 91 * gib, hostTotal: 1000 * gib, hostAvail: 500 * gib},
			map[string]string{"volume_nearly_full": apitype.SeverityWarning}},
		{"volume 99% full", &fakeBackend{total: 100 * gib, free: 1 * gib, size: 100 * gib, alloc: 99 * gib, hostTotal: 1000 * gib, hostAvail: 500 * gib},
			map[string]string{"volume_nearly_full": apitype.SeverityCritical}},
		{"host 95% full", &fakeBackend{total: 10 * gib, free: 9 * gib, size: 10 * gib, alloc: 10 * gib, hostTotal: 100 * gib, hostAvail: 5 * gib, image: "/d/storage/volume.img"},
			map[string]string{"host_nearly_full": apitype.SeverityWarning}},
		{"image may outgrow the host", &fakeBackend{total: 20 * gib, free: 19 * gib, size: 20 * gib, alloc: 1 * gib, hostTotal: 100 * gib, hostAvail: 15 * gib},
			map[string]string{"host_overcommitted": apitype.SeverityWarning}},
	} {
		got := names(volumeHealth(tc.b))
		if len(got) != len(tc.want) {
			t.Errorf("%s: %v; want %v", tc.name, got, tc.want)
			continue
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("%s: %v; want %v", tc.name, got, tc.want)
			}
		}
	}
}
