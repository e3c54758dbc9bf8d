package patroni

import (
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

func TestPrePromote(t *testing.T) {
	s := settings(t)
	s.PrePromote = PrePromote{Bin: "/usr/bin/pgshield", Socket: "/var/lib/pgshield/run/promote.sock"}
	b, err := Generate(s)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Postgresql map[string]any `yaml:"postgresql"`
	}
	if err := yaml.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	// Exactly the binary, the subcommand and the socket: paths, no secret
	// (and nothing from the pgpass file, which Generate never sees).
	want := "/usr/bin/pgshield cluster pre-promote --socket /var/lib/pgshield/run/promote.sock"
	if got := d.Postgresql["pre_promote"]; got != want {
		t.Fatalf("pre_promote = %q, want %q", got, want)
	}

	// Without one the hook is left out (the link package's test, no daemon).
	s.PrePromote = PrePromote{}
	b, err = Generate(s)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "pre_promote") {
		t.Error("a hook without a binary or socket")
	}

	// A path Patroni's shlex would split, or half a hook, is refused.
	for _, pp := range []PrePromote{{Bin: "/usr/bin/pgshield", Socket: "/run/a b.sock"}, {Bin: "/usr/bin/pgshield"}, {Socket: "/run/p.sock"}, {Bin: "pgshield", Socket: "/run/p.sock"}} {
		s.PrePromote = pp
		if _, err := Generate(s); err == nil {
			t.Errorf("Generate with pre_promote %+v succeeded", pp)
		}
	}
}
