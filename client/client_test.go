package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/client"
	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/hooks/contract"
	"github.com/tarsmq/tarsmq/internal/brokertest"
)

// urls returns the broker's socket and TCP URLs.
func urls(b *broker.Broker) map[string]string {
	return map[string]string{"unix": "unix://" + b.SocketPath(), "tcp": "tcp://" + b.Addr().String()}
}

// connect returns a connected client, closed when the test ends.
func connect(t *testing.T, url, id string, edit func(*client.Config)) *client.Client {
	t.Helper()
	cfg := client.Config{URL: url, ClientID: id, Keepalive: client.Seconds(30 * time.Second),
		HeartbeatInterval: client.Seconds(time.Second), ReconnectMinDelay: client.Seconds(100 * time.Millisecond),
		ReconnectMaxDelay: client.Seconds(200 * time.Millisecond), SessionExpiry: time.Hour, PublishQueue: 100, HandlerQueue: 64}
	if edit != nil {
		edit(&cfg)
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// inbox collects messages a handler got.
type inbox struct {
	mu   sync.Mutex
	msgs []client.Message
}

func (in *inbox) handler(_ context.Context, m client.Message) error {
	in.mu.Lock()
	in.msgs = append(in.msgs, m)
	in.mu.Unlock()
	return nil
}

func (in *inbox) wait(t *testing.T, n int) []client.Message {
	t.Helper()
	poll(t, fmt.Sprintf("%d messages", n), func() bool {
		in.mu.Lock()
		defer in.mu.Unlock()
		return len(in.msgs) >= n
	})
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]client.Message(nil), in.msgs...)
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	brokertest.WaitFor(t, 10*time.Second, what, cond)
}

type sttFinal struct {
	Text string `json:"text"`
}

func TestRoundTripTyped(t *testing.T) {
	b := brokertest.Run(t, nil)
	for network, url := range urls(b) {
		t.Run(network, func(t *testing.T) {
			sub := connect(t, url, "llm-"+network, nil)
			got := make(chan sttFinal, 1)
			var from string
			if _, err := client.Handle(sub, t.Context(), "stt/final", func(_ context.Context, m client.Message, f sttFinal) error {
				from = m.Envelope.Source
				got <- f
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			pub := connect(t, url, "stt-"+network, nil)
			if err := pub.PublishEvent(t.Context(), "stt/final", "stt.final", sttFinal{Text: "hello"}, client.QoS(1), client.Correlate("conv-1")); err != nil {
				t.Fatal(err)
			}
			select {
			case f := <-got:
				if f.Text != "hello" || from != "stt-"+network {
					t.Fatalf("got %+v from %s", f, from)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("nothing received")
			}
		})
	}
}

// The broker goes away and comes back on the same socket and store: the
// client reconnects, its subscriptions are back, the publishes it queued
// while down arrive in order, and its health says "reconnected".
func TestReconnect(t *testing.T) {
	cfg := brokertest.Config(t)
	b := brokertest.Start(t, cfg, brokertest.Logger())
	c := connect(t, "unix://"+b.SocketPath(), "worker", func(c *client.Config) { c.EnableHealth = true })
	var in inbox
	if _, err := c.Subscribe(t.Context(), "jobs/#", in.handler); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 3)
	for i := range 3 { // queued while the broker is down, in this order
		go func() {
			errs <- c.PublishEvent(context.Background(), "jobs/mine", "job.new", map[string]int{"n": i}, client.QoS(1))
		}()
		poll(t, "the publish to queue", func() bool { return c.Queued() == i+1 })
	}
	b = brokertest.Start(t, cfg, brokertest.Logger())
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("queued publish: %v", err)
		}
	}
	msgs := in.wait(t, 3)
	for i, m := range msgs[:3] {
		var d map[string]int
		if err := m.Envelope.DecodeData(&d); err != nil || d["n"] != i {
			t.Fatalf("message %d out of order: %s", i, m.Payload)
		}
	}
	h, found, err := b.Store().HealthOf("worker")
	if err != nil || !found || h.Health.Event != "reconnected" {
		t.Fatalf("health after reconnect: %+v %v", h, err)
	}
}

// A cut connection sends the client's will: its health reads ok:false.
func TestWillAfterCut(t *testing.T) {
	b := brokertest.Run(t, nil)
	c := connect(t, "tcp://"+b.Addr().String(), "camera", func(c *client.Config) { c.EnableHealth = true })
	poll(t, "ready", func() bool { h, _, _ := b.Store().HealthOf("camera"); return h.Health.Event == "ready" })
	c.CutConnection()
	poll(t, "the will in the history", func() bool {
		hist, _ := b.Store().History("camera", 10)
		for _, r := range hist {
			if !r.Health.OK && r.Health.Event == "offline" {
				return true
			}
		}
		return false
	})
	poll(t, "the reconnect", func() bool { h, _, _ := b.Store().HealthOf("camera"); return h.Health.Event == "reconnected" })
}

// QoS 1 messages sent while the service is away wait in its session at
// the broker and arrive after it reconnects.
func TestMessagesWhileAwayArriveAfter(t *testing.T) {
	b := brokertest.Run(t, nil)
	c := connect(t, "unix://"+b.SocketPath(), "svc", func(c *client.Config) {
		c.ReconnectMinDelay, c.ReconnectMaxDelay = client.Seconds(time.Second), client.Seconds(time.Second)
	})
	var in inbox
	if _, err := c.Subscribe(t.Context(), "cmd/#", in.handler); err != nil {
		t.Fatal(err)
	}
	pub := connect(t, "tcp://"+b.Addr().String(), "ctl", nil)
	c.CutConnection()
	poll(t, "the disconnect", func() bool { return !c.Connected() })
	for i := range 3 {
		if err := pub.PublishEvent(t.Context(), "cmd/move", "cmd.move", map[string]int{"n": i}, client.QoS(1)); err != nil {
			t.Fatal(err)
		}
	}
	if c.Connected() {
		t.Fatal("reconnected too soon for the test")
	}
	in.wait(t, 3)
}

// Heartbeats go out; a payload that is not an envelope reaches only a raw
// subscription, and is counted for the others.
func TestHeartbeatsAndRaw(t *testing.T) {
	b := brokertest.Run(t, nil)
	c := connect(t, "unix://"+b.SocketPath(), "svc", func(c *client.Config) { c.EnableHeartbeat = true })
	var raw, typed inbox
	if _, err := c.Subscribe(t.Context(), "system/keepalive/#", raw.handler, client.Raw()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(t.Context(), "system/keepalive/#", typed.handler); err != nil {
		t.Fatal(err)
	}
	m := raw.wait(t, 1)[0]
	var hb envelope.Heartbeat
	if err := json.Unmarshal(m.Payload, &hb); err != nil || m.Topic != "system/keepalive/svc" || !hb.OK || hb.Event != "heartbeat" || hb.Timestamp == 0 {
		t.Fatalf("heartbeat %s %q", m.Topic, m.Payload)
	}
	poll(t, "the invalid count", func() bool { return c.Stats().Invalid > 0 })
	if typed.wait(t, 0); len(typed.msgs) != 0 {
		t.Fatal("a non-envelope reached a typed subscription")
	}
}

func TestSlowHandlerBlocksOnlyItself(t *testing.T) {
	b := brokertest.Run(t, nil)
	c := connect(t, "unix://"+b.SocketPath(), "svc", nil)
	release := make(chan struct{})
	stuck := make(chan struct{}, 1)
	if _, err := c.Subscribe(t.Context(), "slow/#", func(context.Context, client.Message) error {
		stuck <- struct{}{}
		<-release
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var fast inbox
	if _, err := c.Subscribe(t.Context(), "fast/#", fast.handler); err != nil {
		t.Fatal(err)
	}
	pub := connect(t, "unix://"+b.SocketPath(), "pub", nil)
	_ = pub.PublishEvent(t.Context(), "slow/x", "x.y", nil, client.QoS(1))
	<-stuck
	for i := range 20 {
		if err := pub.PublishEvent(t.Context(), "fast/x", "x.y", map[string]int{"i": i}, client.QoS(1)); err != nil {
			t.Fatal(err)
		}
	}
	fast.wait(t, 20)
	close(release)
}

func TestHandlerPanicsAndErrorsDoNotStopDelivery(t *testing.T) {
	b := brokertest.Run(t, nil)
	c := connect(t, "unix://"+b.SocketPath(), "svc", nil)
	var calls sync.WaitGroup
	calls.Add(3)
	n := 0
	if _, err := c.Subscribe(t.Context(), "x/#", func(context.Context, client.Message) error {
		defer calls.Done()
		n++
		switch n {
		case 1:
			panic("boom")
		case 2:
			return errors.New("bad")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_ = c.PublishEvent(t.Context(), "x/y", "x.y", nil, client.QoS(1))
	}
	calls.Wait()
	if s := c.Stats(); s.HandlerPanics != 1 || s.HandlerErrors != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDedupe(t *testing.T) {
	b := brokertest.Run(t, nil)
	c := connect(t, "unix://"+b.SocketPath(), "svc", func(c *client.Config) {
		c.DedupeTTL, c.DedupeMaxEntries = client.Seconds(time.Minute), 100
	})
	var in inbox
	if _, err := c.Subscribe(t.Context(), "d/#", in.handler); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "a", "b"} {
		if err := c.PublishEvent(t.Context(), "d/x", "x.y", nil, client.QoS(1), client.WithID(id)); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.PublishEvent(t.Context(), "d/x", "x.other", nil, client.QoS(1), client.WithID("a")) // another type: not a duplicate
	msgs := in.wait(t, 3)
	poll(t, "the duplicate count", func() bool { return c.Stats().Duplicates == 1 })
	if len(msgs) != 3 {
		t.Fatalf("got %d", len(msgs))
	}
}

func TestRequestReply(t *testing.T) {
	b := brokertest.Run(t, nil)
	srv := connect(t, "unix://"+b.SocketPath(), "echo", nil)
	if _, err := srv.Subscribe(t.Context(), "svc/echo", func(ctx context.Context, m client.Message) error {
		var in sttFinal
		_ = m.Envelope.DecodeData(&in)
		return srv.Reply(ctx, m, "echo.reply", sttFinal{Text: strings.ToUpper(in.Text)})
	}); err != nil {
		t.Fatal(err)
	}
	c := connect(t, "tcp://"+b.Addr().String(), "asker", nil)
	for _, word := range []string{"hi", "there"} {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		m, err := c.Request(ctx, "svc/echo", "echo.request", sttFinal{Text: word})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var out sttFinal
		if err := m.Envelope.DecodeData(&out); err != nil || out.Text != strings.ToUpper(word) || m.Envelope.Source != "echo" || m.Envelope.Correlate == "" {
			t.Fatalf("reply %s: %v", m.Payload, err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Request(ctx, "svc/nobody", "echo.request", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered request: %v", err)
	}
	// After a reconnect requests still work, and none is left pending.
	c.CutConnection()
	poll(t, "the reconnect", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := c.Request(ctx, "svc/echo", "echo.request", sttFinal{Text: "again"})
		return err == nil
	})
	if n := c.PendingRequests(); n != 0 {
		t.Fatalf("%d requests left pending", n)
	}
}

// The broker's refusal comes back as a *RejectedError with its reason.
func TestContractRejectionIsAnError(t *testing.T) {
	b := brokertest.Run(t, func(c *broker.Config) {
		c.Contract.Rules = []contract.Rule{{Topic: "stt/final", Type: "stt.final"}}
	})
	c := connect(t, "unix://"+b.SocketPath(), "stt", nil)
	err := c.PublishEvent(t.Context(), "stt/final", "stt.partial", nil, client.QoS(1))
	var rej *client.RejectedError
	if !errors.As(err, &rej) || rej.Code != contract.CodeInvalid || !strings.Contains(rej.Reason, `"type"`) {
		t.Fatalf("got %v", err)
	}
	err = c.PublishHealth(t.Context(), client.Health{OK: true})
	if err != nil {
		t.Fatalf("own health: %v", err)
	}
	err = c.Publish(t.Context(), envelope.HealthTopic("tts"), []byte(`{}`), client.QoS(1))
	if !errors.As(err, &rej) || rej.Code != contract.CodeInvalid {
		t.Fatalf("raw non-envelope: %v", err)
	}
	if _, err := client.New(client.Config{URL: "unix:///x", ClientID: "a"}); err == nil {
		t.Fatal("a config without delays validated")
	}
}

// Close says shutdown, sends no will, and leaves no goroutine behind.
func TestCloseSaysShutdownAndLeaksNothing(t *testing.T) {
	b := brokertest.Run(t, nil)
	opt := goleak.IgnoreCurrent()
	c := connect(t, "unix://"+b.SocketPath(), "tts", func(c *client.Config) { c.EnableHealth, c.EnableHeartbeat = true, true })
	if _, err := c.Subscribe(t.Context(), "x/#", func(context.Context, client.Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.Request(ctx, "nobody/listens", "x.y", nil); err == nil {
		t.Fatal("a reply from nobody")
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	h, _, _ := b.Store().HealthOf("tts")
	if h.Health.OK || h.Health.Event != "shutdown" {
		t.Fatalf("after Close: %+v", h.Health)
	}
	goleak.VerifyNone(t, opt)
	hist, _ := b.Store().History("tts", 10)
	for _, r := range hist {
		if r.Health.Event == "offline" {
			t.Fatal("a clean Close sent the will")
		}
	}
}

// A Connect that times out says why the attempts fail.
func TestConnectTimeoutSaysWhy(t *testing.T) {
	url := "unix://" + filepath.Join(t.TempDir(), "absent.sock")
	c, err := client.New(client.DefaultConfig(url, "lonely"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = c.Connect(ctx)
	if err == nil || !strings.Contains(err.Error(), "no such file or directory") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Connect: %v", err)
	}
}
