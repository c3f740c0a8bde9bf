package contract_test

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
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	c.Write(encodePacket(b, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true, Keepalive: 60}}))
	r := bufio.NewReaderSize(c, 64<<10)
	skipPacket(b, r)
	return c, r
}

// skipPacket reads one packet and returns its type.
func skipPacket(b *testing.B, r *bufio.Reader) byte {
	h, err := r.ReadByte()
	if err != nil {
		b.Fatal(err)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := r.Discard(n); err != nil {
		b.Fatal(err)
	}
	return h >> 4
}

// benchBroker measures messages per second through the broker: one MQTT
// 3.1.1 publisher sends 200-byte envelopes at QoS 0 as fast as it can to one
// subscriber. Only the broker's work differs between the variants.
func benchBroker(b *testing.B, edit func(*broker.Config)) {
	br := brokertest.Run(b, func(c *broker.Config) {
		c.Contract.BindSource = false
		c.Limits.PublishRate = 0                     // measure the contract, not the rate limit
		c.SlowSubscriber.Policy = broker.PolicyBlock // count every message: none may be dropped
		edit(c)
	})
	addr := br.Addr().String()
	sub, subR := rawConn(b, addr, "sub")
	defer sub.Close()
	sub.Write(encodePacket(b, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "bench/#"}}}))
	if skipPacket(b, subR) != packets.Suback {
		b.Fatal("no SUBACK")
	}
	pub, _ := rawConn(b, addr, "pub")
	defer pub.Close()
	msg := encodePacket(b, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "bench/stt/final",
		Payload: []byte(`{"id":"9f1c2b3a4d5e4f60a1b2c3d4e5f60718","type":"stt.final","ts":1729123456.789123,"source":"stt-worker","data":{"text":"hello there, robot","lang":"en","confidence":0.93}}`)})

	done := make(chan struct{})
	go func() {
		defer close(done)
		for range b.N {
			skipPacket(b, subR)
		}
	}()
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	start := time.Now()
	w := bufio.NewWriterSize(pub, 64<<10)
	for range b.N {
		w.Write(msg)
	}
	w.Flush()
	<-done
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

func BenchmarkBrokerContractOn(b *testing.B) {
	benchBroker(b, func(*broker.Config) {})
}

// Off: every topic exempt, so the hook returns after one topic match.
func BenchmarkBrokerContractOff(b *testing.B) {
	benchBroker(b, func(c *broker.Config) { c.Contract.Exempt = []string{"#"} })
}
