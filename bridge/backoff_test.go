package bridge

import (
	"testing"
	"time"
)

// Reconnect waits double from the minimum to the maximum, each a random
// point in its upper half, so that a fleet that lost its upstream at once
// spreads its reconnects: 1,000 devices on the same attempt fall over the
// whole half-interval, not on a few instants.
func TestBackoffJitter(t *testing.T) {
	lo, hi := time.Second, time.Minute
	for n := 1; n <= 12; n++ {
		d := min(lo<<(n-1), hi)
		buckets := map[int]int{}
		for range 1000 {
			w := backoff(n, lo, hi)
			if w < d/2 || w > d {
				t.Fatalf("attempt %d: waited %v, want %v..%v", n, w, d/2, d)
			}
			buckets[int(10*(w-d/2)/(d/2+1))]++ // ten slices of the half-interval
		}
		for b := range 10 {
			if buckets[b] < 50 { // 100 expected in each
				t.Fatalf("attempt %d: %d of 1000 in slice %d: not spread %v", n, buckets[b], b, buckets)
			}
		}
	}
	if c := (Config{Name: "x"}).Defaults("d"); c.FirstConnectJitter != 5*time.Second || c.ReconnectMin != time.Second || c.ReconnectMax != time.Minute {
		t.Fatalf("defaults %+v", c)
	}
}
