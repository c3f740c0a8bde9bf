package broker_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

func TestRoundTripV5(t *testing.T) {
	b := brokertest.Run(t, nil)
	for _, ep := range endpoints(b) {
		t.Run(ep.network, func(t *testing.T) {
			in := newInbox()
			sub := connectPaho(t, ep, "sub-"+ep.network, in, pahoOpts{})
			subscribe(t, sub, "robot/+/status", 1)
			subscribe(t, sub, "log/#", 0)
			pub := connectPaho(t, ep, "pub-"+ep.network, nil, pahoOpts{})

			me := "pub-" + ep.network
			r := publish(t, pub, me, "robot/arm/status", "ok", 1, false)
			if r == nil || r.ReasonCode != 0 {
				t.Fatalf("QoS 1 publish not acknowledged with success: %+v", r)
			}
			publish(t, pub, me, "robot/arm/extra/status", "no: + is one level", 1, false)
			publish(t, pub, me, "log/a/b/c", "deep", 0, false)
			publish(t, pub, me, "log", "parent", 0, false) // # also matches the parent level
			in.waitFor(t, 3, 5*time.Second)

			got := map[string]string{}
			in.mu.Lock()
			for _, m := range in.msgs {
				got[m.Topic] = string(m.Payload)
			}
			in.mu.Unlock()
			want := map[string]string{"robot/arm/status": envFrom(me, "ok"), "log/a/b/c": envFrom(me, "deep"), "log": envFrom(me, "parent")}
			for topic, p := range want {
				if got[topic] != p {
					t.Errorf("topic %s: got %q, want %q (all: %v)", topic, got[topic], p, got)
				}
			}
			if _, ok := got["robot/arm/extra/status"]; ok {
				t.Errorf("+ matched two levels")
			}
		})
	}
}

func TestRetainedReachesLateSubscriber(t *testing.T) {
	b := brokertest.Run(t, nil)
	ep := endpoints(b)[0]
	pub := connectPaho(t, ep, "stt", nil, pahoOpts{})
	health := `{"id":"h1","type":"health.status","ts":1729123456.5,"source":"stt","data":{"ok":true,"event":"ready"}}`
	if _, err := pub.Publish(t.Context(), &paho.Publish{Topic: "system/health/stt", QoS: 1, Retain: true, Payload: []byte(health)}); err != nil {
		t.Fatal(err)
	}

	in := newInbox()
	sub := connectPaho(t, endpoints(b)[1], "late", in, pahoOpts{})
	subscribe(t, sub, "system/health/#", 1)
	in.waitFor(t, 1, 5*time.Second)
	in.mu.Lock()
	m := in.msgs[0]
	in.mu.Unlock()
	if m.Topic != "system/health/stt" || string(m.Payload) != health || !m.Retain {
		t.Fatalf("late subscriber got topic %q payload %q retain %v", m.Topic, m.Payload, m.Retain)
	}
}

// A v3.1.1 client (Eclipse Paho's MQTT 3 library) round-trips over both
// listeners and gets QoS 1 acknowledged.
func TestRoundTripV311(t *testing.T) {
	b := brokertest.Run(t, nil)
	for _, url := range []string{"tcp://" + b.Addr().String(), "unix://" + b.SocketPath()} {
		t.Run(strings.Split(url, ":")[0], func(t *testing.T) {
			got := make(chan pahov3.Message, 10)
			connect := func(id string) pahov3.Client {
				opts := pahov3.NewClientOptions().AddBroker(url).SetClientID(id).SetProtocolVersion(4).
					SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
				c := pahov3.NewClient(opts)
				if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
					t.Fatalf("v3.1.1 connect: %v", tok.Error())
				}
				t.Cleanup(func() { c.Disconnect(100) })
				return c
			}
			sub := connect("v3-sub")
			if tok := sub.Subscribe("cmd/#", 1, func(_ pahov3.Client, m pahov3.Message) { got <- m }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("v3.1.1 subscribe: %v", tok.Error())
			}
			pub := connect("v3-pub")
			tok := pub.Publish("cmd/move", 1, false, envFrom("v3-pub", "forward"))
			if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("v3.1.1 QoS 1 publish not acknowledged: %v", tok.Error())
			}
			select {
			case m := <-got:
				if m.Topic() != "cmd/move" || string(m.Payload()) != envFrom("v3-pub", "forward") || m.Qos() != 1 {
					t.Fatalf("got %s %q qos %d", m.Topic(), m.Payload(), m.Qos())
				}
			case <-time.After(5 * time.Second):
				t.Fatal("v3.1.1 subscriber got nothing")
			}
		})
	}
}

// The raw client sees the PUBACK itself: reason success, same packet id.
func TestQoS1AcknowledgedOnTheWire(t *testing.T) {
	b := brokertest.Run(t, nil)
	for _, v := range []byte{mqtttest.V311, mqtttest.V5} {
		c := mqtttest.Dial(t, "unix", b.SocketPath(), v)
		if ack := c.Connect("raw", nil); ack.ReasonCode != 0 {
			t.Fatalf("v%d connack reason %#x", v, ack.ReasonCode)
		}
		ack := c.Publish("a/b", []byte(envFrom("raw", "x")), 1, false)
		if ack.FixedHeader.Type != packets.Puback || ack.ReasonCode != 0 {
			t.Fatalf("v%d: got %+v", v, ack)
		}
		c.Disconnect()
	}
}

func TestSocketFileModeAndGroup(t *testing.T) {
	b := brokertest.Run(t, func(c *broker.Config) {
		c.Listeners.Unix.Mode = "0640"
		c.Listeners.Unix.Group = "0" // gid 0 is always resolvable; chown to it works for root only
		if os.Geteuid() != 0 {
			c.Listeners.Unix.Group = ""
		}
	})
	fi, err := os.Stat(b.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o640 {
		t.Fatalf("socket mode %v, want socket 0640", fi.Mode())
	}

	def := brokertest.Run(t, nil)
	fi, err = os.Stat(def.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Fatalf("default socket mode %v, want 0660", fi.Mode().Perm())
	}
}

func TestSecondBrokerDoesNotStealLiveSocket(t *testing.T) {
	first := brokertest.Run(t, nil)
	cfg := brokertest.Config(t)
	cfg.Listeners.Unix.Path = first.SocketPath()
	startFails(t, cfg, "in use by another tarsmq")
	// The first still serves its socket.
	c := mqtttest.Dial(t, "unix", first.SocketPath(), mqtttest.V5)
	if ack := c.Connect("still-there", nil); ack.ReasonCode != 0 {
		t.Fatalf("first broker after refused second: connack %#x", ack.ReasonCode)
	}
}

func TestSocketPathChecks(t *testing.T) {
	t.Run("stale socket replaced", func(t *testing.T) {
		cfg := brokertest.Config(t)
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Listeners.Unix.Path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close() // the file stays, nobody listens: what a crashed broker leaves
		b := brokertest.Start(t, cfg, brokertest.Logger())
		c := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
		if ack := c.Connect("x", nil); ack.ReasonCode != 0 {
			t.Fatalf("connack %#x", ack.ReasonCode)
		}
	})
	t.Run("other server not stolen", func(t *testing.T) {
		cfg := brokertest.Config(t)
		ln, err := net.Listen("unix", cfg.Listeners.Unix.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		startFails(t, cfg, "another server is listening")
	})
	t.Run("regular file kept", func(t *testing.T) {
		cfg := brokertest.Config(t)
		if err := os.WriteFile(cfg.Listeners.Unix.Path, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		startFails(t, cfg, "not a socket")
		if data, _ := os.ReadFile(cfg.Listeners.Unix.Path); string(data) != "data" {
			t.Fatal("the regular file was touched")
		}
	})
	t.Run("world-writable directory refused", func(t *testing.T) {
		cfg := brokertest.Config(t)
		dir := filepath.Join(filepath.Dir(cfg.Listeners.Unix.Path), "open")
		if err := os.Mkdir(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		cfg.Listeners.Unix.Path = filepath.Join(dir, "mq.sock")
		startFails(t, cfg, "writable by everyone")
	})
}

func TestCloseIsIdempotentAndRemovesSocket(t *testing.T) {
	cfg := brokertest.Config(t)
	b := brokertest.Start(t, cfg, brokertest.Logger()) // its cleanup closes once more
	c := mqtttest.Dial(t, "tcp", b.Addr().String(), mqtttest.V5)
	c.Connect("bye", nil)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = b.Close(ctx) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Close #%d: %v", i, err)
		}
	}
	if err := b.Close(ctx); err != nil {
		t.Errorf("Close again: %v", err)
	}
	d, err := c.Next(packets.Disconnect, 0, 5*time.Second)
	if err != nil || d.ReasonCode != packets.ErrServerShuttingDown.Code {
		t.Errorf("client got %+v, %v; want DISCONNECT 0x8B", d, err)
	}
	if _, err := os.Lstat(cfg.Listeners.Unix.Path); !os.IsNotExist(err) {
		t.Errorf("socket file left behind: %v", err)
	}
	if err := b.Start(context.Background()); err == nil {
		t.Error("Start after Close succeeded")
	}
}

// A connection that never sends CONNECT must not hold Close (mochi waits for
// every client goroutine).
func TestCloseWithSilentConnection(t *testing.T) {
	b := brokertest.Run(t, nil)
	conn, err := net.Dial("unix", b.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if !poll(5*time.Second, func() bool { return b.Connections() == 1 }) {
		t.Fatalf("broker has %d connections, want 1", b.Connections())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close with a silent connection: %v", err)
	}
}

func TestWebSocketListener(t *testing.T) {
	b := brokertest.Run(t, func(c *broker.Config) { c.Listeners.WebSocket.Address = "127.0.0.1:0" })
	if b.WebSocketAddr() == nil {
		t.Fatal("no websocket address after Start")
	}
	wsConnect(t, b.WebSocketAddr().String(), "")
	if err := wsDial(b.WebSocketAddr().String(), "http://evil.example"); err == nil {
		t.Fatal("a foreign browser origin was allowed to connect")
	}
}

func TestPortInUseNamesTheKey(t *testing.T) {
	first := brokertest.Run(t, nil)
	cfg := brokertest.Config(t)
	cfg.Listeners.TCP.Address = first.Addr().String()
	startFails(t, cfg, "listeners.tcp.address", "address already in use")
	// Nothing of the failed start stays bound: its socket path is free.
	if _, err := os.Lstat(cfg.Listeners.Unix.Path); !os.IsNotExist(err) {
		t.Fatalf("failed start left its socket: %v", err)
	}
}

// Clients leaving while the broker shuts down must not hang Close (mochi's
// Clients.GetByListener takes its read lock twice and deadlocked against
// Clients.Delete).
func TestCloseWhileClientsDisconnect(t *testing.T) {
	for range 4 * runs() {
		b := brokertest.Run(t, nil)
		var clients []*mqtttest.Client
		for i := range 32 {
			c := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
			c.Connect(fmt.Sprint("c", i), nil)
			clients = append(clients, c)
		}
		for _, c := range clients {
			go c.Disconnect()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := b.Close(ctx)
		cancel()
		if err != nil {
			_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
			t.Fatalf("Close while clients disconnect: %v", err)
		}
	}
}

// mochi deletes retained messages older than MaximumMessageExpiryInterval
// (a day by default) once a second; the broker sets it to 0 so device state
// published once stays retained, while a publisher's own expiry still holds.
func TestRetainedMessagesDoNotExpire(t *testing.T) {
	b := brokertest.Run(t, nil)
	pub := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	pub.Connect("pub", nil)
	pub.Publish("state/old", []byte(envFrom("pub", "kept")), 1, true)
	pub.Send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
		TopicName:   "state/short",
		Payload:     []byte(envFrom("pub", "expires")),
		Properties:  packets.Properties{MessageExpiryInterval: 1},
	})
	topics := b.Server().Topics
	if !poll(5*time.Second, func() bool { return len(topics.Messages("state/short")) == 1 }) {
		t.Fatal("retained message with expiry never stored")
	}
	old := topics.Messages("state/old")
	if len(old) != 1 {
		t.Fatalf("retained: %v", old)
	}
	old[0].Created -= 3 * 24 * 3600 // three days old
	topics.RetainMessage(old[0])

	// mochi's expiry sweep runs every second; give it a few.
	if !poll(5*time.Second, func() bool { return len(topics.Messages("state/short")) == 0 }) {
		t.Fatal("the publisher's 1 s expiry was not honoured")
	}
	time.Sleep(1500 * time.Millisecond)
	sub := mqtttest.Dial(t, "tcp", b.Addr().String(), mqtttest.V311)
	sub.Connect("late", nil)
	sub.Subscribe("state/#", 0)
	pk := sub.Expect(packets.Publish, 0)
	if pk.TopicName != "state/old" || string(pk.Payload) != envFrom("pub", "kept") {
		t.Fatalf("late subscriber got %s %q", pk.TopicName, pk.Payload)
	}
	if extra, err := sub.Next(packets.Publish, 0, 200*time.Millisecond); err == nil {
		t.Fatalf("expired message delivered: %s", extra.TopicName)
	}
}

// startFails checks that a broker with cfg refuses to start with an error
// containing every one of want, and that Close after the failed Start works.
func startFails(t *testing.T, cfg broker.Config, want ...string) {
	t.Helper()
	b, err := broker.New(cfg, brokertest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	err = b.Start(context.Background())
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Fatalf("Start: got %v, want an error saying %q", err, w)
		}
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatalf("Close after a failed Start: %v", err)
	}
}
