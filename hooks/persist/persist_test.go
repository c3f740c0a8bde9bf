package persist_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

func env(source, text string) []byte {
	return []byte(fmt.Sprintf(`{"id":%q,"type":"test.message","ts":1729123456.5,"source":%q,"data":{"text":%q}}`, "id-"+text, source, text))
}

// restart closes b and starts a broker on the same configuration and store.
func restart(t *testing.T, b *broker.Broker, cfg broker.Config) *broker.Broker {
	t.Helper()
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	return brokertest.Start(t, cfg, brokertest.Logger())
}

func TestRetainedSurvivesRestart(t *testing.T) {
	cfg := brokertest.Config(t)
	b := brokertest.Start(t, cfg, brokertest.Logger())
	pub := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	pub.Connect("pub", nil)
	pub.Publish("state/kept", env("pub", "kept"), 1, true)
	pub.Send(packets.Packet{ // the publisher's own expiry: 2 s
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		TopicName:   "state/short", PacketID: 77, Payload: env("pub", "short"),
		Properties: packets.Properties{MessageExpiryInterval: 2},
	})
	pub.Expect(packets.Puback, 77)
	pub.Publish("state/cleared", env("pub", "cleared"), 1, true)
	pub.Publish("state/cleared", nil, 1, true) // an empty retained message clears it

	b = restart(t, b, cfg)
	sub := mqtttest.Dial(t, "tcp", b.Addr().String(), mqtttest.V311)
	sub.Connect("late", nil)
	sub.Subscribe("state/#", 1)
	got := map[string]string{}
	for range 2 {
		pk := sub.Expect(packets.Publish, 0)
		got[pk.TopicName] = string(pk.Payload)
		sub.Ack(pk)
	}
	if got["state/kept"] != string(env("pub", "kept")) || got["state/short"] != string(env("pub", "short")) {
		t.Fatalf("after restart: %v", got)
	}
	if extra, err := sub.Next(packets.Publish, 0, 200*time.Millisecond); err == nil {
		t.Fatalf("a cleared retained message came back: %s", extra.TopicName)
	}
	if !brokertest.Poll(10*time.Second, func() bool { return len(b.Server().Topics.Messages("state/short")) == 0 }) {
		t.Fatal("the publisher's expiry was lost in the restart")
	}
	if len(b.Server().Topics.Messages("state/kept")) != 1 {
		t.Fatal("a retained message without expiry expired")
	}
}

func persistentSession(pk *packets.Packet) {
	pk.Connect.Clean = false
	pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
}

// A persistent session, its subscription and the QoS 1 messages queued for
// it while it was away all survive a broker restart.
func TestSessionSurvivesRestart(t *testing.T) {
	cfg := brokertest.Config(t)
	b := brokertest.Start(t, cfg, brokertest.Logger())
	w := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	w.Connect("worker", persistentSession)
	w.Subscribe("jobs/#", 1)
	w.Disconnect()

	pub := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	pub.Connect("pub", nil)
	for i := range 5 {
		pub.Publish("jobs/a", env("pub", fmt.Sprint("job", i)), 1, false)
	}

	b = restart(t, b, cfg)
	w = mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	if ack := w.Connect("worker", persistentSession); !ack.SessionPresent {
		t.Fatal("session not present after restart")
	}
	seen := map[string]bool{}
	for range 5 {
		pk := w.Expect(packets.Publish, 0)
		seen[string(pk.Payload)] = true
		w.Ack(pk)
	}
	for i := range 5 {
		if !seen[string(env("pub", fmt.Sprint("job", i)))] {
			t.Fatalf("job %d lost in the restart: %v", i, seen)
		}
	}
	// The subscription came back too: a new job arrives without SUBSCRIBE.
	pub = mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	pub.Connect("pub", nil)
	pub.Publish("jobs/b", env("pub", "after"), 1, false)
	if pk := w.Expect(packets.Publish, 0); string(pk.Payload) != string(env("pub", "after")) {
		t.Fatalf("got %q", pk.Payload)
	}
}

// Clean sessions outlive nothing, so they cost no writes.
func TestCleanSessionsAreNotStored(t *testing.T) {
	b := brokertest.Run(t, nil)
	sub := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	sub.Connect("clean-sub", nil)
	sub.Subscribe("x/#", 1)
	pub := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V311)
	pub.Connect("clean-pub", nil)
	pub.Publish("x/y", env("clean-pub", "hi"), 1, false)
	pk := sub.Expect(packets.Publish, 0)
	n := 0
	for _, prefix := range []string{"m:c:", "m:s:", "m:i:"} {
		_ = b.Store().Scan([]byte(prefix), func(k, _ []byte) error { n++; return nil })
	}
	if n != 0 {
		t.Fatalf("%d session records stored for clean sessions", n)
	}
	sub.Ack(pk)
}
