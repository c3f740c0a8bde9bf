package bridge_test

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/bridge"
	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

// env is a valid envelope from source carrying text.
func env(source, text string) []byte {
	e, err := envelope.New("test.message", source, map[string]string{"text": text})
	if err != nil {
		panic(err)
	}
	b, _ := e.Marshal()
	return b
}

// textOf returns the text an env carries.
func textOf(t *testing.T, payload []byte) string {
	t.Helper()
	e, err := envelope.Parse(payload)
	if err != nil {
		t.Fatalf("not an envelope: %q", payload)
	}
	d, err := envelope.Decode[map[string]string](e)
	if err != nil {
		t.Fatal(err)
	}
	return d["text"]
}

// fast makes a bridge connect at once and retry soon.
func fast(c bridge.Config) bridge.Config {
	c.FirstConnectJitter, c.ReconnectMin, c.ReconnectMax = time.Millisecond, 50*time.Millisecond, 200*time.Millisecond
	return c
}

// local starts a broker named device with the given bridges.
func local(t testing.TB, device string, bridges ...bridge.Config) *broker.Broker {
	t.Helper()
	return brokertest.Run(t, func(c *broker.Config) {
		relay(c)
		c.DeviceID = device
		for _, b := range bridges {
			c.Bridges = append(c.Bridges, fast(b))
		}
	})
}

// relay readies a broker to take other services' envelopes from a bridge:
// a tarsmq upstream needs contract.bind_source off.
func relay(c *broker.Config) {
	c.Contract.BindSource = false
	c.Limits.PublishRate = 0
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	brokertest.WaitFor(t, 15*time.Second, what, cond)
}

func connected(b *broker.Broker) func() bool {
	return func() bool { s := b.Bridges(); return len(s) > 0 && s[0].Connected }
}

// Health goes up under fleet/{device_id}/, commands come down from under
// it, both with the prefixes mapped; what breaks the contract coming down
// is not published.
func TestForwardBothWaysWithPrefixes(t *testing.T) {
	up := brokertest.Run(t, func(c *broker.Config) {
		relay(c)
		// The fleet's own broker lets anything through: the device's
		// contract is what must stop the bad command.
		c.Contract.Exempt = append(c.Contract.Exempt, "fleet/#")
	})
	dev := local(t, "robot7", bridge.Config{Name: "fleet", URL: "tcp://" + up.Addr().String(),
		Out: []bridge.Rule{{Topic: "system/health/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}},
		In:  []bridge.Rule{{Topic: "commands/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}},
	})
	waitFor(t, "the bridge to connect", connected(dev))

	fleet := mqtttest.Dial(t, "tcp", up.Addr().String(), mqtttest.V5)
	fleet.Connect("fleet-view", nil)
	fleet.Subscribe("fleet/+/system/health/#", 1)
	svc := mqtttest.Dial(t, "unix", dev.SocketPath(), mqtttest.V5)
	svc.Connect("arm", nil)
	svc.Subscribe("commands/#", 1)
	h, _ := envelope.New(envelope.TypeHealth, "arm", envelope.Health{OK: true, Event: "ready"})
	health, _ := h.Marshal()
	if ack := svc.Publish(envelope.HealthTopic("arm"), health, 1, true); ack.ReasonCode != 0 {
		t.Fatalf("health: %#x", ack.ReasonCode)
	}
	pk := fleet.Expect(packets.Publish, 0)
	fleet.Ack(pk)
	if pk.TopicName != "fleet/robot7/system/health/arm" || string(pk.Payload) != string(health) {
		t.Fatalf("upstream got %s %q", pk.TopicName, pk.Payload)
	}

	cmd := mqtttest.Dial(t, "tcp", up.Addr().String(), mqtttest.V5)
	cmd.Connect("operator", nil)
	cmd.Publish("fleet/robot7/commands/arm", []byte("not an envelope"), 1, false)
	move := env("operator", "move")
	cmd.Publish("fleet/robot7/commands/arm", move, 1, false)
	got := svc.Expect(packets.Publish, 0)
	svc.Ack(got)
	if got.TopicName != "commands/arm" || string(got.Payload) != string(move) {
		t.Fatalf("device got %s %q", got.TopicName, got.Payload)
	}
	if s := dev.Bridges()[0]; s.RejectedIn != 1 || s.ForwardedIn != 1 || s.ForwardedOut != 1 {
		t.Fatalf("bridge state %+v", s)
	}
	waitFor(t, "the sent message to leave the queue", func() bool { return dev.Bridges()[0].Queued == 0 })
}

// receiveInOrder reads n envelopes and checks their texts are
// prefix0..prefix(n-1), each once, in order.
func receiveInOrder(t *testing.T, c *mqtttest.Client, prefix string, n int) {
	t.Helper()
	var got []string
	for i := range n {
		pk, err := c.Next(packets.Publish, 0, 15*time.Second)
		if err != nil {
			t.Fatalf("message %d of %d: %v; got %v", i, n, err, got)
		}
		if pk.FixedHeader.Qos > 0 {
			c.Ack(pk)
		}
		got = append(got, textOf(t, pk.Payload))
	}
	for i, text := range got {
		if want := fmt.Sprintf("%s%d", prefix, i); text != want {
			t.Fatalf("message %d is %q, want %q; all: %v", i, text, want, got)
		}
	}
	if pk, err := c.Next(packets.Publish, 0, 300*time.Millisecond); err == nil {
		t.Fatalf("one more message: %q", pk.Payload)
	}
}

// persistent makes a subscriber's session outlive its connection.
var persistent = mqtttest.Persistent

// While the upstream is down, QoS 1 messages queue; once it is back, every
// one arrives once and in order.
func TestStoreAndForwardAcrossUpstreamOutage(t *testing.T) {
	upCfg := brokertest.Config(t)
	relay(&upCfg)
	up := brokertest.Start(t, upCfg, brokertest.Logger())
	upCfg.Listeners.TCP.Address = up.Addr().String() // the same port again after the outage
	dev := local(t, "robot1", bridge.Config{Name: "fleet", URL: "tcp://" + up.Addr().String(),
		Out: []bridge.Rule{{Topic: "telemetry/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}}})
	waitFor(t, "the bridge to connect", connected(dev))
	sub := mqtttest.Dial(t, "tcp", up.Addr().String(), mqtttest.V5)
	sub.Connect("fleet-db", persistent)
	sub.Subscribe("fleet/robot1/#", 1)
	pub := mqtttest.Dial(t, "unix", dev.SocketPath(), mqtttest.V5)
	pub.Connect("imu", nil)
	for i := range 20 {
		pub.Publish("telemetry/imu", env("imu", fmt.Sprintf("a%d", i)), 1, false)
	}
	receiveInOrder(t, sub, "a", 20)
	sub.Disconnect()

	if err := up.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the bridge to notice", func() bool { return !dev.Bridges()[0].Connected })
	const n = 500
	for i := range n {
		if ack := pub.Publish("telemetry/imu", env("imu", fmt.Sprintf("b%d", i)), 1, false); ack.ReasonCode != 0 {
			t.Fatalf("local publish %d: %#x", i, ack.ReasonCode)
		}
	}
	if s := dev.Bridges()[0]; s.Queued != n || s.QueuedBytes == 0 {
		t.Fatalf("while the upstream is down: %+v", s)
	}

	up = brokertest.Start(t, upCfg, brokertest.Logger())
	waitFor(t, "the bridge to reconnect", connected(dev))
	sub = mqtttest.Dial(t, "tcp", up.Addr().String(), mqtttest.V5)
	sub.Connect("fleet-db", persistent)
	receiveInOrder(t, sub, "b", n)
	waitFor(t, "the queue to empty", func() bool { return dev.Bridges()[0].Queued == 0 })
}

// The queue's bound holds, with what it cost counted: drop_oldest keeps
// the newest, refuse_new the oldest.
func TestQueueBound(t *testing.T) {
	for _, policy := range []string{bridge.DropOldest, bridge.RefuseNew} {
		t.Run(policy, func(t *testing.T) {
			dev := local(t, "robot2", bridge.Config{Name: "fleet", URL: "tcp://127.0.0.1:1", // nothing listens there
				Queue: bridge.QueueConfig{MaxMessages: 50, Overflow: policy},
				Out:   []bridge.Rule{{Topic: "telemetry/#", QoS: 1}}})
			pub := mqtttest.Dial(t, "unix", dev.SocketPath(), mqtttest.V5)
			pub.Connect("imu", nil)
			for i := range 80 {
				pub.Publish("telemetry/imu", env("imu", fmt.Sprint(i)), 1, false)
			}
			s := dev.Bridges()[0]
			lost := s.Dropped
			if policy == bridge.RefuseNew {
				lost = s.Refused
			}
			if s.Queued != 50 || lost != 30 || s.Connected || !strings.Contains(s.LastError, "refused") {
				t.Fatalf("state %+v", s)
			}
		})
	}
}

// freePort is a loopback address nothing listens on now.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Two tarsmq bridged to each other on the same topics pass each message
// once, and never back: b starts first with a bridge to a's address, then a
// with a bridge to b.
func TestNoLoopBetweenTwoBridgedBrokers(t *testing.T) {
	aAddr := freePort(t)
	both := []bridge.Rule{{Topic: "x/#", QoS: 1}}
	b := local(t, "b", bridge.Config{Name: "to-a", URL: "tcp://" + aAddr, Out: both})
	aCfg := brokertest.Config(t)
	relay(&aCfg)
	aCfg.DeviceID = "a"
	aCfg.Listeners.TCP.Address = aAddr
	aCfg.Bridges = []bridge.Config{fast(bridge.Config{Name: "to-b", URL: "tcp://" + b.Addr().String(), Out: both})}
	a := brokertest.Start(t, aCfg, brokertest.Logger())
	waitFor(t, "a to connect", connected(a))
	waitFor(t, "b to connect", connected(b))

	watch := func(br *broker.Broker, id string) *mqtttest.Client {
		c := mqtttest.Dial(t, "unix", br.SocketPath(), mqtttest.V5)
		c.Connect(id, nil)
		c.Subscribe("x/#", 1)
		return c
	}
	onA, onB := watch(a, "watch-a"), watch(b, "watch-b")
	pubA := mqtttest.Dial(t, "unix", a.SocketPath(), mqtttest.V5)
	pubA.Connect("pa", nil)
	pubB := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	pubB.Connect("pb", nil)
	pubA.Publish("x/1", env("pa", "from a"), 1, false)
	pubB.Publish("x/2", env("pb", "from b"), 1, false)
	for _, c := range []*mqtttest.Client{onA, onB} {
		expectEachOnce(t, c, "x/1", "x/2")
	}
}

// A message a bridge brought down does not go back up it, even when its in
// and out rules overlap.
func TestNoEchoUpTheSameBridge(t *testing.T) {
	up := brokertest.Run(t, relay)
	dev := local(t, "robot3", bridge.Config{Name: "fleet", URL: "tcp://" + up.Addr().String(),
		Out: []bridge.Rule{{Topic: "shared/#", QoS: 1}}, In: []bridge.Rule{{Topic: "shared/#", QoS: 1}}})
	waitFor(t, "the bridge to connect", connected(dev))
	upSub := mqtttest.Dial(t, "tcp", up.Addr().String(), mqtttest.V5)
	upSub.Connect("fleet-view", nil)
	upSub.Subscribe("shared/#", 1)
	devSub := mqtttest.Dial(t, "unix", dev.SocketPath(), mqtttest.V5)
	devSub.Connect("local-view", nil)
	devSub.Subscribe("shared/#", 1)
	op := mqtttest.Dial(t, "tcp", up.Addr().String(), mqtttest.V5)
	op.Connect("operator", nil)
	op.Publish("shared/down", env("operator", "down"), 1, false)
	svc := mqtttest.Dial(t, "unix", dev.SocketPath(), mqtttest.V5)
	svc.Connect("svc", nil)
	svc.Publish("shared/up", env("svc", "up"), 1, false)
	expectEachOnce(t, upSub, "shared/down", "shared/up")
	expectEachOnce(t, devSub, "shared/down", "shared/up")
}

// expectEachOnce receives one message on each topic, and checks that no
// more come: a loop would bring more copies at once, so it waits a little.
func expectEachOnce(t *testing.T, c *mqtttest.Client, topics ...string) {
	t.Helper()
	got := map[string]int{}
	for range topics {
		pk := c.Expect(packets.Publish, 0)
		c.Ack(pk)
		got[pk.TopicName]++
	}
	if pk, err := c.Next(packets.Publish, 0, 500*time.Millisecond); err == nil {
		got[pk.TopicName]++
	}
	for _, topic := range topics {
		if got[topic] != 1 {
			t.Fatalf("deliveries %v, want each of %v once", got, topics)
		}
	}
}

// Retained local state (health) is sent again after every reconnect: an
// upstream that comes back empty has it again, for a late subscriber.
func TestRetainedStateRepublishedAfterReconnect(t *testing.T) {
	up := brokertest.Run(t, relay)
	addr := up.Addr().String()
	dev := local(t, "robot4", bridge.Config{Name: "fleet", URL: "tcp://" + addr,
		Out: []bridge.Rule{{Topic: "system/health/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}}})
	waitFor(t, "the bridge to connect", connected(dev))
	svc := mqtttest.Dial(t, "unix", dev.SocketPath(), mqtttest.V5)
	svc.Connect("arm", nil)
	h, _ := envelope.New(envelope.TypeHealth, "arm", envelope.Health{OK: true, Event: "ready"})
	health, _ := h.Marshal()
	if ack := svc.Publish(envelope.HealthTopic("arm"), health, 1, true); ack.ReasonCode != 0 {
		t.Fatalf("health: %#x", ack.ReasonCode)
	}
	waitFor(t, "the health to go up", func() bool { return dev.Bridges()[0].ForwardedOut == 1 })
	if err := up.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the bridge to notice", func() bool { return !dev.Bridges()[0].Connected })

	fresh := brokertest.Config(t) // a new store: nothing retained
	relay(&fresh)
	fresh.Listeners.TCP.Address = addr
	brokertest.Start(t, fresh, brokertest.Logger())
	waitFor(t, "the bridge to reconnect", connected(dev))
	waitFor(t, "the health to go up again", func() bool { return dev.Bridges()[0].ForwardedOut == 2 })
	late := mqtttest.Dial(t, "tcp", addr, mqtttest.V5)
	late.Connect("dashboard", nil)
	late.Subscribe("fleet/+/system/health/#", 1)
	pk := late.Expect(packets.Publish, 0)
	if pk.TopicName != "fleet/robot4/system/health/arm" || !pk.FixedHeader.Retain || string(pk.Payload) != string(health) {
		t.Fatalf("late subscriber got %s retain=%v %q", pk.TopicName, pk.FixedHeader.Retain, pk.Payload)
	}
}

// A retained message under an in rule comes down with the bridge's first
// subscription, not again each time the link comes back: a retained
// command would otherwise run once per reconnect.
func TestRetainedInMessageNotRepeatedOnReconnect(t *testing.T) {
	upCfg := brokertest.Config(t)
	relay(&upCfg)
	up := brokertest.Start(t, upCfg, brokertest.Logger())
	upCfg.Listeners.TCP.Address = up.Addr().String()
	op := mqtttest.Dial(t, "tcp", up.Addr().String(), mqtttest.V5)
	op.Connect("operator", nil)
	op.Publish("fleet/robot6/commands/mode", env("operator", "patrol"), 1, true)
	op.Disconnect()

	dev := local(t, "robot6", bridge.Config{Name: "fleet", URL: "tcp://" + up.Addr().String(),
		In: []bridge.Rule{{Topic: "commands/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}}})
	waitFor(t, "the retained command", func() bool { return dev.Bridges()[0].ForwardedIn == 1 })
	// and its PUBACK upstream: an unacknowledged one is sent again (QoS 1)
	waitFor(t, "the upstream's inflight to empty", func() bool {
		cl, ok := up.Server().Clients.Get("tarsmq-robot6-fleet")
		return ok && cl.State.Inflight.Len() == 0
	})
	svc := mqtttest.Dial(t, "unix", dev.SocketPath(), mqtttest.V5)
	svc.Connect("nav", nil)
	svc.Subscribe("commands/#", 1) // gets the command, retained here too
	if err := up.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the bridge to notice", func() bool { return !dev.Bridges()[0].Connected })
	up = brokertest.Start(t, upCfg, brokertest.Logger()) // the same store: the bridge's session is still there
	waitFor(t, "the bridge to reconnect", connected(dev))
	// A repeat would come with the subscription, before anything published
	// after it: the service reads up to a marker command.
	op = mqtttest.Dial(t, "tcp", up.Addr().String(), mqtttest.V5)
	op.Connect("operator", nil)
	op.Publish("fleet/robot6/commands/marker", env("operator", "marker"), 1, false)
	modes := 0
	for {
		pk := svc.Expect(packets.Publish, 0)
		svc.Ack(pk)
		if pk.TopicName == "commands/marker" {
			break
		}
		modes++
	}
	if modes != 1 {
		t.Fatalf("the retained command reached the service %d times", modes)
	}
}

// A message over the upstream's maximum packet size (which tarsmq
// announces in its CONNACK) is not sent, since the upstream would drop the
// link for it and the queue would stall behind it: it leaves the queue,
// counted, and the rest goes on.
func TestOversizedMessageDoesNotStallTheQueue(t *testing.T) {
	dev, sub := oversized(t, "5")
	receiveInOrder(t, sub, "a", 2)
	waitFor(t, "the queue to empty", func() bool { return dev.Bridges()[0].Queued == 0 })
	if s := dev.Bridges()[0]; s.RefusedUp != 1 || !s.Connected || s.ForwardedOut != 2 {
		t.Fatalf("state %+v", s)
	}
}

// Over MQTT 3.1.1 the upstream cannot announce its maximum packet size, and
// drops the link on an oversized message: after a few links ended that way
// the message leaves the queue, counted, and the rest goes on.
func TestMessageThatKeepsDroppingTheLinkIsTakenOut(t *testing.T) {
	dev, sub := oversized(t, "3.1.1")
	var got []string
	for !slices.Contains(got, "a1") {
		pk, err := sub.Next(packets.Publish, 0, 15*time.Second)
		if err != nil {
			t.Fatalf("got %v: %v", got, err)
		}
		sub.Ack(pk)
		if text := textOf(t, pk.Payload); len(got) == 0 || got[len(got)-1] != text { // a resend is fine
			got = append(got, text)
		}
	}
	if fmt.Sprint(got) != "[a0 a1]" {
		t.Fatalf("upstream got %v", got)
	}
	waitFor(t, "the queue to empty", func() bool { return dev.Bridges()[0].Queued == 0 })
	if s := dev.Bridges()[0]; s.RefusedUp != 1 {
		t.Fatalf("state %+v", s)
	}
}

// oversized bridges a device over protocol to an upstream that takes
// packets of 1 KiB at most, with a subscriber there, and publishes a0, a
// message of 2 KB and a1 on the device.
func oversized(t *testing.T, protocol string) (*broker.Broker, *mqtttest.Client) {
	t.Helper()
	up := brokertest.Run(t, func(c *broker.Config) { relay(c); c.Limits.MaxPacketSize = 1 << 10 })
	dev := local(t, "robot2", bridge.Config{Name: "fleet", URL: "tcp://" + up.Addr().String(), Protocol: protocol,
		Out: []bridge.Rule{{Topic: "camera/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}}})
	waitFor(t, "the bridge to connect", connected(dev))
	sub := mqtttest.Dial(t, "tcp", up.Addr().String(), mqtttest.V5)
	sub.Connect("fleet-db", nil)
	sub.Subscribe("fleet/#", 1)
	pub := mqtttest.Dial(t, "unix", dev.SocketPath(), mqtttest.V5)
	pub.Connect("camera", nil)
	for _, text := range []string{"a0", strings.Repeat("x", 2000), "a1"} {
		if ack := pub.Publish("camera/front", env("camera", text), 1, false); ack.ReasonCode != 0 {
			t.Fatalf("local publish: %#x", ack.ReasonCode)
		}
	}
	return dev, sub
}

// A command sent while the device was off waits in the bridge's session
// upstream and is resent when it comes back, as its first packet; the
// bridge's SUBSCRIBE then carries the same packet id, which mochi refuses
// (0x91). The bridge asks again rather than drop the link, which would
// bring the resend, and the refusal, back on every reconnect.
func TestResumedSessionWithPendingInMessageConnects(t *testing.T) {
	up := brokertest.Run(t, relay)
	devCfg := brokertest.Config(t)
	relay(&devCfg)
	devCfg.DeviceID = "robot5"
	devCfg.Bridges = []bridge.Config{fast(bridge.Config{Name: "fleet", URL: "tcp://" + up.Addr().String(),
		In: []bridge.Rule{{Topic: "commands/#", RemotePrefix: "fleet/{device_id}/", QoS: 1}}})}
	dev := brokertest.Start(t, devCfg, brokertest.Logger())
	waitFor(t, "the bridge to connect", connected(dev))
	if err := dev.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	op := mqtttest.Dial(t, "tcp", up.Addr().String(), mqtttest.V5)
	op.Connect("operator", nil)
	op.Publish("fleet/robot5/commands/dock", env("operator", "dock"), 1, false)

	dev = brokertest.Start(t, devCfg, brokertest.Logger())
	waitFor(t, "the bridge to connect", connected(dev))
	waitFor(t, "the command", func() bool { return dev.Bridges()[0].ForwardedIn >= 1 })
	op.Publish("fleet/robot5/commands/marker", env("operator", "marker"), 1, false)
	waitFor(t, "the marker", func() bool { return dev.Bridges()[0].ForwardedIn >= 2 })
	if s := dev.Bridges()[0]; s.ForwardedIn != 2 || s.Connects != 1 {
		t.Fatalf("%d messages came down over %d links; want the command once and the marker, over one", s.ForwardedIn, s.Connects)
	}
}
