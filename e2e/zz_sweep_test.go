package e2e

import "testing"

// TestZZSecretsSweep runs the secrets sweep (secrets_test.go). Go runs a
// package's tests in the order of its files, sorted by name, and of the
// functions in each: this file sorts last, so the sweep sees what every
// other test left behind. No e2e test is parallel; keep it so, or the
// sweep would run before the parallel ones.
func TestZZSecretsSweep(t *testing.T) { secretsSweep(t) }
