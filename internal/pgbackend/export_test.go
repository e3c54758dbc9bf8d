package pgbackend

// CheckGoroutines lets the external tests (realpg_test.go, which imports
// internal/testutil/pgtest and so internal/postgres, which imports this
// package) check for leaks as the internal ones do.
var CheckGoroutines = checkGoroutines
