package flow

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

func encode(t *testing.T, pk packets.Packet) []byte {
	t.Helper()
	b, err := mqtttest.Encode(pk)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testController(t *testing.T, cfg Config) *Controller {
	t.Helper()
	ctl := New(mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)}), slog.New(slog.DiscardHandler))
	if err := ctl.Init(cfg); err != nil {
		t.Fatal(err)
	}
	return ctl
}

var testConfig = Config{MaxInflight: 2, QueueMessages: 100, QueueBytes: 1 << 20, Policy: Drop, BlockTimeout: time.Second, WriteTimeout: 5 * time.Second}

// mochi writes whole packets, but Write must not depend on it: a packet split
// at any byte, even inside its length, arrives whole and in order, and QoS 1
// publishes beyond the quota wait for acks.
func TestConnWriteSplitsAndQuota(t *testing.T) {
	ctl := testController(t, testConfig)
	client, server := net.Pipe()
	c := ctl.Wrap(server)
	defer c.Close()

	connack := encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ProtocolVersion: 4})
	var pubs [][]byte
	for i := range 4 {
		pubs = append(pubs, encode(t, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			TopicName:   "t/x", PacketID: uint16(i + 1), Payload: bytes.Repeat([]byte{'a' + byte(i)}, 200),
		}))
	}
	stream := append(append([]byte{}, pubs[0]...), connack...) // a publish before CONNACK must wait for it
	for _, p := range pubs[1:] {
		stream = append(stream, p...)
	}
	for _, cut := range [][2]int{{0, 1}, {1, 2}, {2, 150}, {150, 205}, {205, len(stream)}} {
		if _, err := c.Write(stream[cut[0]:cut[1]]); err != nil {
			t.Fatalf("write %v: %v", cut, err)
		}
	}

	read := func(want []byte) {
		t.Helper()
		got := make([]byte, len(want))
		_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(client, got); err != nil {
			t.Fatalf("read: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("got %x..., want %x...", got[:8], want[:8])
		}
	}
	read(connack)
	read(pubs[0])
	read(pubs[1])
	// The quota of 2 is used up: nothing more until an ack.
	_ = client.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes beyond the quota", n)
	}
	c.ack(1)
	read(pubs[2])
	c.ack(2)
	read(pubs[3])
}

func TestFrameRejectsOverlongLength(t *testing.T) {
	if _, _, err := frame([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}); err == nil {
		t.Fatal("a five-byte remaining length was accepted")
	}
	if _, ok, err := frame([]byte{0x30, 0x80}); ok || err != nil {
		t.Fatalf("an unfinished length: ok %v err %v", ok, err)
	}
}

// flow reads mochi's unexported per-client outbound channel; an upgrade of
// mochi that renames it must fail here rather than silently blind the gate.
func TestMochiOutboundChannelVisible(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	cl := srv.NewClient(nil, "t", "id", false)
	n := outboundLen(cl)
	if n == nil {
		t.Fatal("mochi's Client.State.outbound is gone: update outboundLen")
	}
	if n() != 0 {
		t.Fatalf("new client has %d queued", n())
	}
}

// Resends are put back in the order their packet identifiers were handed
// out, across the wrap at 65535; a fresh copy of a resent identifier wins.
func TestResendOrder(t *testing.T) {
	m := func(id uint16, dup bool) message { return message{b: []byte{byte(id)}, qos: 1, id: id, dup: dup} }
	held := []message{m(3, true), m(65534, true), m(1, true), m(65535, true), m(7, false), m(2, true), m(3, false)}
	kept, removed := resendOrder(held)
	var ids []uint16
	for _, k := range kept {
		ids = append(ids, k.id)
	}
	if want := []uint16{65534, 65535, 1, 2, 7, 3}; !slices.Equal(ids, want) {
		t.Fatalf("order %v, want %v", ids, want)
	}
	if len(removed) != 1 || removed[0].id != 3 || !removed[0].dup {
		t.Fatalf("removed %v", removed)
	}
}
