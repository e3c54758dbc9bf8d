package daemon

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestStartAll(t *testing.T) {
	var log []string
	comp := func(name string, fail bool) component {
		return component{name: name,
			start: func(context.Context) error {
				log = append(log, "start "+name)
				if fail {
					return errors.New("boom")
				}
				return nil
			},
			stop: func() { log = append(log, "stop "+name) }}
	}
	stopAll, err := startAll(context.Background(), []component{comp("a", false), {name: "no-op"}, comp("b", false)})
	if err != nil {
		t.Fatal(err)
	}
	stopAll()
	if want := []string{"start a", "start b", "stop b", "stop a"}; !slices.Equal(log, want) {
		t.Errorf("log = %q; want %q", log, want)
	}
	log = nil
	_, err = startAll(context.Background(), []component{comp("a", false), comp("b", false), comp("c", true), comp("d", false)})
	if err == nil || !strings.HasPrefix(err.Error(), "c: boom") {
		t.Errorf("startAll error = %v; want c's, named", err)
	}
	if want := []string{"start a", "start b", "start c", "stop b", "stop a"}; !slices.Equal(log, want) {
		t.Errorf("log = %q; want %q: a failed start is not stopped, the started ones are, in reverse", log, want)
	}
}
