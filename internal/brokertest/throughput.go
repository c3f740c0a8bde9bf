package brokertest

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

// Envelope200 is a valid envelope of about 200 bytes from stt-worker, as
// the Python services publish it.
const Envelope200 = `{"id":"9f1c2b3a4d5e4f60a1b2c3d4e5f60718","type":"stt.final","ts":1729123456.789123,"source":"stt-worker","data":{"text":"hello there, robot","lang":"en","confidence":0.93}}`

// Throughput measures messages per second through br: one MQTT 3.1.1
// publisher with client id pubID sends Envelope200 on topic at QoS 0, b.N
// times as fast as it can, to one subscriber on filter, which must get
// every one (run the broker with a slow-subscriber policy that blocks).
// It reports msgs/s; ns/op is per message published and delivered.
func Throughput(b *testing.B, br *broker.Broker, pubID, topic, filter string) {
	b.Helper()
	addr := br.Addr().String()
	sub, subR := rawConn(b, addr, "sub")
	defer sub.Close()
	if _, err := sub.Write(encode(b, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter}}})); err != nil {
		b.Fatal(err)
	}
	if typ, err := readPacket(subR); err != nil || typ != packets.Suback {
		b.Fatalf("no SUBACK: type %d, %v", typ, err)
	}
	pub, _ := rawConn(b, addr, pubID)
	defer pub.Close()
	msg := encode(b, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic, Payload: []byte(Envelope200)})

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
}

func encode(b *testing.B, pk packets.Packet) []byte {
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
	if _, err := c.Write(encode(b, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
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
