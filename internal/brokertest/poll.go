package brokertest

import (
	"testing"
	"time"
)

// Poll checks cond every few milliseconds until it holds or within
// passes, and reports whether it held.
func Poll(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// WaitFor fails t unless cond holds within the given time; what names what
// was awaited.
func WaitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(within, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}
