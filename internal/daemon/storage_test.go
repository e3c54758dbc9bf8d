package daemon

import "testing"

func TestAutogrowTarget(t *testing.T) {
	const mib, gib = int64(1 << 20), int64(1 << 30)
	tests := []struct {
		name       string
		cur, limit int64
		want       int64
		ok         bool
	}{
		{name: "small volume grows by 1 GiB", cur: gib, limit: 100 * gib, want: 2 * gib, ok: true},
		{name: "large volume grows by 25%", cur: 40 * gib, limit: 100 * gib, want: 50 * gib, ok: true},
		{name: "rounded up to a MiB", cur: 10*gib + 3, limit: 100 * gib, want: 12*gib + 512*mib + mib, ok: true},
		{name: "capped by the host", cur: 40 * gib, limit: 45 * gib, want: 45 * gib, ok: true},
		{name: "cap rounded down to a MiB", cur: 40 * gib, limit: 45*gib + 123, want: 45 * gib, ok: true},
		{name: "too little room to be worth it", cur: 40 * gib, limit: 43 * gib, want: 40 * gib},
		{name: "small volume, less than 64 MiB room", cur: 100 * mib, limit: 150 * mib, want: 100 * mib},
		{name: "host already over", cur: 40 * gib, limit: 30 * gib, want: 40 * gib},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := autogrowTarget(tt.cur, tt.limit)
			if got != tt.want || ok != tt.ok {
				t.Errorf("autogrowTarget(%d, %d) = %d, %v; want %d, %v", tt.cur, tt.limit, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestBytesText(t *testing.T) {
	for in, want := range map[int64]string{1 << 30: "1 GiB", 3 << 29: "1.50 GiB", 640 << 20: "640 MiB", 0: "0 MiB"} {
		if got := bytesText(in); got != want {
			t.Errorf("bytesText(%d) = %q; want %q", in, got, want)
		}
	}
}
