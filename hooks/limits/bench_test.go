package limits_test

import (
	"testing"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/brokertest"
)

// benchPublish measures messages per second through the broker with the
// publish rate limit as given (0: off). Slow subscribers block rather than
// lose messages, so that every one arrives.
func benchPublish(b *testing.B, rate float64) {
	br := brokertest.Run(b, func(c *broker.Config) {
		c.Store.Sync = false
		c.Limits.PublishRate = rate
		c.SlowSubscriber.Policy = broker.PolicyBlock
	})
	brokertest.Throughput(b, br, "stt-worker", "stt/final", "stt/#")
	if t := br.Limits().ThrottledOf("stt-worker"); t > 0 {
		b.Fatalf("the publisher was throttled %d times: the rate is not high enough to measure only the limiter", t)
	}
}

// BenchmarkPublishRateLimit is the cost of the per-client publish rate
// limit (a token bucket per publisher, consulted for every PUBLISH read),
// on at a rate that never throttles versus off. ns/op is per message
// published and delivered.
func BenchmarkPublishRateLimit(b *testing.B) {
	b.Run("off", func(b *testing.B) { benchPublish(b, 0) })
	b.Run("on-1e9", func(b *testing.B) { benchPublish(b, 1e9) })
}
