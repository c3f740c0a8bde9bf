package bridge

import (
	"testing"
)

// Pushing into a full queue under drop_oldest: each push drops the oldest.
// The cost per push must not grow with how many were dropped before.
func BenchmarkQueueOverflowDropOldest(b *testing.B) {
	st := openStore(b)
	q, err := openQueue(st, "fleet", QueueConfig{MaxMessages: 10_000, Overflow: DropOldest})
	if err != nil {
		b.Fatal(err)
	}
	r := record{topic: "fleet/robot/telemetry/imu", payload: make([]byte, 200), qos: 1}
	for range 10_000 {
		if _, err := q.push(r); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		if _, err := q.push(r); err != nil {
			b.Fatal(err)
		}
	}
}
