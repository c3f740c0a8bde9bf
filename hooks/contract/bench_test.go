package contract_test

import (
	"testing"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/brokertest"
)

// benchBroker measures messages per second through the broker (see
// brokertest.Throughput). Only the broker's work differs between the
// variants.
func benchBroker(b *testing.B, edit func(*broker.Config)) {
	br := brokertest.Run(b, func(c *broker.Config) {
		c.Contract.BindSource = false
		c.Limits.PublishRate = 0                     // measure the contract, not the rate limit
		c.SlowSubscriber.Policy = broker.PolicyBlock // count every message: none may be dropped
		edit(c)
	})
	brokertest.Throughput(b, br, "pub", "bench/stt/final", "bench/#")
}

func BenchmarkBrokerContractOn(b *testing.B) {
	benchBroker(b, func(*broker.Config) {})
}

// Off: every topic exempt, so the hook returns after one topic match.
func BenchmarkBrokerContractOff(b *testing.B) {
	benchBroker(b, func(c *broker.Config) { c.Contract.Exempt = []string{"#"} })
}
