package broker_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/hooks/limits"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

// An MQTT 5 client over its publish rate is told (DISCONNECT 0x96 with a
// reason) and cut off; the others go on.
func TestPublishRateV5Disconnected(t *testing.T) {
	b := brokertest.Run(t, func(c *broker.Config) { c.Limits.PublishRate, c.Limits.PublishBurst = 20, 5 })
	calm, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "calm", nil)
	flood, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "flood", nil)
	for i := range 50 {
		if err := flood.TrySend(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish},
			TopicName: "flood/x", Payload: []byte(envFrom("flood", itoa(i)))}); err != nil {
			break
		}
	}
	pk, err := flood.Next(packets.Disconnect, 0, 5*time.Second)
	if err != nil {
		t.Fatalf("no DISCONNECT: %v", err)
	}
	if pk.ReasonCode != packets.ErrMessageRateTooHigh.Code || !strings.Contains(pk.Properties.ReasonString, "limits.publish_rate") {
		t.Fatalf("DISCONNECT %#x %q", pk.ReasonCode, pk.Properties.ReasonString)
	}
	if err := flood.Closed(5 * time.Second); err == nil {
		t.Fatal("the flooding client is still connected")
	}
	if got := calm.Publish("calm/x", []byte(envFrom("calm", "hi")), 1, false); got.ReasonCode != 0 {
		t.Fatalf("calm client: %#x", got.ReasonCode)
	}
	if n := b.Limits().Counts()[limits.Disconnected]; n != 1 {
		t.Fatalf("disconnections counted: %d", n)
	}
}

// An MQTT 3.1.1 client over its rate is slowed down, not dropped: every
// message arrives, no sooner than the rate allows.
func TestPublishRateV311Throttled(t *testing.T) {
	const rate, burst, n = 100, 10, 60
	b := brokertest.Run(t, func(c *broker.Config) { c.Limits.PublishRate, c.Limits.PublishBurst = rate, burst })
	sub, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "sub", nil)
	sub.Subscribe("fast/#", 0)
	pub, _ := connack(t, "tcp", b.Addr().String(), mqtttest.V311, "fast", nil)
	start := time.Now()
	for i := range n {
		pub.Publish("fast/x", []byte(envFrom("fast", itoa(i))), 0, false)
	}
	for range n {
		sub.Expect(packets.Publish, 0)
	}
	// A lower bound only: the rate must have held the publisher back.
	if elapsed, least := time.Since(start), time.Duration(n-burst)*time.Second/rate*8/10; elapsed < least {
		t.Fatalf("%d messages in %v: the rate of %d/s did not hold (at least %v)", n, elapsed, rate, least)
	}
	if got := b.Limits().ThrottledOf("fast"); got == 0 {
		t.Fatal("no throttling counted")
	}
	if err := pub.Closed(0); err != nil {
		t.Fatalf("the throttled client was disconnected: %v", err)
	}
}

// A subscriber that never reads loses its own messages (counted for it);
// the publisher and a fast subscriber go on: at QoS 0 without waiting for
// it at all, at QoS 1 after waiting block_timeout once.
func TestSlowSubscriberDoesNotStallOthers(t *testing.T) {
	for _, qos := range []byte{0, 1} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			const n = 6000
			b := runLoad(t, func(c *broker.Config) {
				c.Limits.MaxQueuedMessages = 1000
				if qos == 0 {
					// Were QoS 0 publishers to wait, this would hold them
					// for an hour and the test would fail.
					c.SlowSubscriber.BlockTimeout = time.Hour
				}
			})
			slow, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "slow", func(pk *packets.Packet) {
				pk.Properties.ReceiveMaximum = 10
			})
			slow.Subscribe("load/#", qos)
			slow.PauseReading()
			fast, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "fast", nil)
			fast.Subscribe("load/#", qos)
			pub, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "pub", nil)
			done := make(chan struct{})
			var got atomic.Int64
			go func() {
				defer close(done)
				for range n {
					pk := fast.Expect(packets.Publish, 0)
					if qos > 0 {
						fast.Ack(pk)
					}
					got.Add(1)
				}
			}()
			for i := range n {
				if ack := pub.Publish("load/x", []byte(payload(0, i)), qos, false); qos > 0 && ack.ReasonCode != 0 {
					t.Fatalf("publish %d: %#x", i, ack.ReasonCode)
				}
				if qos == 0 && i%500 == 499 {
					// Nothing holds a QoS 0 publisher back: let the fast
					// subscriber keep up, as a subscriber that is not slow
					// does, so that only the slow one loses messages.
					if !poll(10*time.Second, func() bool { return got.Load() >= int64(i-100) }) {
						t.Fatalf("the fast subscriber is stuck at %d of %d", got.Load(), i)
					}
				}
			}
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the fast subscriber did not get every message")
			}
			if b.Dropped("slow") == 0 || b.Dropped("fast") != 0 {
				t.Fatalf("drops: slow %d, fast %d", b.Dropped("slow"), b.Dropped("fast"))
			}
		})
	}
}

// A packet over limits.max_packet_size disconnects its sender only.
func TestOversizedPacketDisconnectsOnlyItsSender(t *testing.T) {
	b := brokertest.Run(t, func(c *broker.Config) { c.Limits.MaxPacketSize = 1 << 10 })
	sub, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "sub", nil)
	sub.Subscribe("x/#", 1)
	big, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "big", nil)
	other, _ := connack(t, "tcp", b.Addr().String(), mqtttest.V311, "other", nil)
	_ = big.TrySend(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "x/big",
		Payload: []byte(envSized("big", "x", 2<<10))})
	if err := big.Closed(5 * time.Second); err == nil {
		t.Fatal("a 2 KiB packet over a 1 KiB limit left its sender connected")
	}
	small := []byte(envFrom("other", "fine"))
	if got := other.Publish("x/small", small, 1, false); got.ReasonCode != 0 {
		t.Fatalf("other client: %#x", got.ReasonCode)
	}
	if pk := sub.Expect(packets.Publish, 0); pk.TopicName != "x/small" {
		t.Fatalf("subscriber got %s", pk.TopicName)
	}
}

// Topics and filters over the length and depth limits are refused with
// reasons; 3.1.1 publishers are acknowledged and their message dropped.
func TestTopicLimits(t *testing.T) {
	b := brokertest.Run(t, func(c *broker.Config) { c.Limits.MaxTopicLength, c.Limits.MaxTopicLevels = 32, 4 })
	sub, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "sub", nil)
	sub.Subscribe("#", 1)
	c, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "c", nil)
	long, deep := "t/"+strings.Repeat("x", 40), "a/b/c/d/e"
	for _, tc := range []struct{ topic, want string }{{long, "limits.max_topic_length"}, {deep, "limits.max_topic_levels"}} {
		got := c.Publish(tc.topic, []byte(envFrom("c", "x")), 1, false)
		if got.ReasonCode != packets.ErrTopicNameInvalid.Code || !strings.Contains(got.Properties.ReasonString, tc.want) {
			t.Errorf("%s: %#x %q", tc.topic, got.ReasonCode, got.Properties.ReasonString)
		}
	}
	if got := c.Subscribe(long+"/#", 0); got.ReasonCodes[0] != packets.ErrTopicFilterInvalid.Code {
		t.Errorf("long filter: SUBACK %#x", got.ReasonCodes[0])
	}
	old, _ := connack(t, "tcp", b.Addr().String(), mqtttest.V311, "old", nil)
	if got := old.Publish(deep, []byte(envFrom("old", "x")), 1, false); got.ReasonCode != 0 {
		t.Errorf("3.1.1: PUBACK %#x", got.ReasonCode)
	}
	old.Publish("a/ok", []byte(envFrom("old", "x")), 1, false)
	if pk := sub.Expect(packets.Publish, 0); pk.TopicName != "a/ok" {
		t.Fatalf("delivered %s", pk.TopicName)
	}
}

// Retained messages are held to a count and a size; replacing or clearing
// one makes room.
func TestRetainedQuotas(t *testing.T) {
	b := brokertest.Run(t, func(c *broker.Config) { c.Limits.MaxRetained, c.Limits.MaxRetainedBytes = 3, 2000 })
	c, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "c", nil)
	retain := func(topic string, size int) packets.Packet {
		return c.Publish(topic, []byte(envSized("c", "x", size)), 1, true)
	}
	for _, topic := range []string{"r/1", "r/2", "r/3"} {
		if got := retain(topic, 200); got.ReasonCode != 0 {
			t.Fatalf("%s: %#x", topic, got.ReasonCode)
		}
	}
	if got := retain("r/4", 200); got.ReasonCode != packets.ErrQuotaExceeded.Code ||
		!strings.Contains(got.Properties.ReasonString, "limits.max_retained_messages") {
		t.Fatalf("4th retained: %#x %q", got.ReasonCode, got.Properties.ReasonString)
	}
	notRetainedOn(t, b, "r/4")
	if got := retain("r/1", 300); got.ReasonCode != 0 {
		t.Fatalf("replacing: %#x", got.ReasonCode)
	}
	if got := c.Publish("r/2", nil, 1, true); got.ReasonCode != 0 {
		t.Fatalf("clearing: %#x", got.ReasonCode)
	}
	if got := retain("r/4", 200); got.ReasonCode != 0 {
		t.Fatalf("after clearing one: %#x", got.ReasonCode)
	}
	if got := retain("r/3", 1800); got.ReasonCode != packets.ErrQuotaExceeded.Code ||
		!strings.Contains(got.Properties.ReasonString, "limits.max_retained_bytes") {
		t.Fatalf("over the bytes: %#x %q", got.ReasonCode, got.Properties.ReasonString)
	}
	if n, _ := b.Limits().Retained(); n != 3 {
		t.Fatalf("%d retained counted, want 3", n)
	}
}
