package clienterr

import (
	"fmt"
	"testing"
)

func TestAs(t *testing.T) {
	e := New("28P01", "password authentication failed for user %q", "bob")
	e.Reason = "wrong proof"
	wrapped := fmt.Errorf("login: %w", e)
	got, ok := As(wrapped)
	if !ok || got != e {
		t.Fatalf("As(%v) = %v, %v; want the Error", wrapped, got, ok)
	}
	if got.Error() != `password authentication failed for user "bob": wrong proof` {
		t.Errorf("Error() = %q", got.Error())
	}
	if _, ok := As(fmt.Errorf("plain")); ok {
		t.Error("As(plain error) = ok")
	}
}
