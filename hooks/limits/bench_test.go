package limits_test

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

func encodePacket(b *testing.B, pk packets.Packet) []byte {
	b.Helper()
	out, err := mqtttest.Encode(pk)
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// rawConn connects with MQTT 3.1.1 and reads the CONNACK.
func rawConn(b *testing.B, addr, id string) (net.Conn, *bufio.Reader) {
	b.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Write(encodePacket(b, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true, Keepalive: 60}})); err != nil {
		b.Fatal(err)
	}
	r := bufio.NewReaderSize(c, 64<<10)
	if typ, err := readPacket(r); err != nil || typ != packets.Connack {
		b.Fatalf("no CONNACK: type %d, %v", typ, err)
	}
	return c, r
}

// readPacket reads and discards one packet and returns its type.
func readPacket(r *bufio.Reader) (byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return 0, err
	}
	_, err = r.Discard(n)
	return h >> 4, err
}

// benchPublish measures messages per second through the broker: one MQTT
// 3.1.1 publisher sends 200-byte envelopes at QoS 0 as fast as it can to
// one subscriber, with the publish rate limit as given (0: off). Slow
// subscribers block rather than lose messages, so that every one arrives.
func benchPublish(b *testing.B, rate float64) {
	br := brokertest.Run(b, func(c *broker.Config) {
		c.Store.Sync = false
		c.Limits.PublishRate = rate
		c.SlowSubscriber.Policy = broker.PolicyBlock
	})
	addr := br.Addr().String()
	sub, subR := rawConn(b, addr, "sub")
	defer sub.Close()
	if _, err := sub.Write(encodePacket(b, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "stt/#"}}})); err != nil {
		b.Fatal(err)
	}
	if typ, err := readPacket(subR); err != nil || typ != packets.Suback {
		b.Fatalf("no SUBACK: type %d, %v", typ, err)
	}
	pub, _ := rawConn(b, addr, "stt-worker")
	defer pub.Close()
	msg := encodePacket(b, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "stt/final",
		Payload: []byte(`{"id":"9f1c2b3a4d5e4f60a1b2c3d4e5f60718","type":"stt.final","ts":1729123456.789123,"source":"stt-worker","data":{"text":"hello there, robot","lang":"en","confidence":0.93}}`)})

	n := b.N
	done := make(chan error, 1)
	go func() {
		for range n {
			if _, err := readPacket(subR); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	w := bufio.NewWriterSize(pub, 64<<10)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range n {
		if _, err := w.Write(msg); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			b.Fatal(err)
		}
	case <-time.After(time.Minute):
		b.Fatalf("the subscriber did not get all %d messages", n)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(n)/elapsed.Seconds(), "msgs/s")
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
