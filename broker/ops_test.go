package broker_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
	"github.com/tarsmq/tarsmq/internal/sdnotify"
)

// get fetches path from the broker's admin listener.
func get(t *testing.T, b *broker.Broker, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + b.AdminAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// /healthz and the systemd watchdog follow the self-check: 200 and pets
// while the broker works, 503 and no pets once its store is gone.
func TestHealthzAndWatchdogFollowSelfCheck(t *testing.T) {
	dir, err := os.MkdirTemp("", "tqwd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pets := make(chan time.Time, 1024)
	go func() {
		buf := make([]byte, 512)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "WATCHDOG=1" {
				pets <- time.Now()
			}
		}
	}()
	const watchdog = 300 * time.Millisecond // pets every 100 ms
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "300000")

	b := brokertest.Run(t, nil)
	var logs brokertest.LogBuffer
	ctx, cancel := context.WithCancel(context.Background())
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		sdnotify.New(slog.New(slog.NewTextHandler(&logs, nil))).Watchdog(ctx, b.SelfCheck)
	}()
	defer func() { cancel(); <-watching }()

	for range 3 {
		select {
		case <-pets:
		case <-time.After(5 * watchdog):
			t.Fatal("the watchdog is not petted while the broker works")
		}
	}
	if code, body := get(t, b, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz: %d %q, want 200 ok", code, body)
	}

	closeCtx, cancelClose := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelClose()
	if err := b.Store().Close(closeCtx); err != nil {
		t.Fatal(err)
	}
	broken := time.Now()
	code, body := get(t, b, "/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "store") {
		t.Fatalf("/healthz with the store closed: %d %q, want 503 naming the store", code, body)
	}
	// A pet already under way may still arrive; after that, none for five
	// watchdog periods.
	quiet := time.After(5 * watchdog)
	for done := false; !done; {
		select {
		case at := <-pets:
			if at.Sub(broken) > watchdog/3+50*time.Millisecond {
				t.Fatalf("watchdog petted %v after the store broke", at.Sub(broken))
			}
		case <-quiet:
			done = true
		}
	}
	if !strings.Contains(logs.String(), "self-check failed") {
		t.Errorf("no self-check failure logged:\n%s", logs.String())
	}
}

// scrape reads /metrics into name{labels} -> value.
func scrape(t *testing.T, b *broker.Broker) map[string]float64 {
	t.Helper()
	code, body := get(t, b, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v\n%s", err, body)
	}
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// After real traffic over the wire, /metrics counts it: clients, messages
// and bytes both ways, retained messages, contract rejections by rule,
// health records and the services not ok, and the store's size.
func TestMetricsCountTraffic(t *testing.T) {
	b := brokertest.Run(t, nil)
	before := scrape(t, b)
	for _, name := range []string{"tarsmq_clients_connected", "tarsmq_messages_received_total", "tarsmq_bytes_sent_total",
		"tarsmq_inflight_messages", "tarsmq_dropped_messages_total{reason=slow_subscriber}", "tarsmq_store_write_errors_total",
		"tarsmq_health_services_not_ok", "go_goroutines", "process_resident_memory_bytes",
		"tarsmq_connections_refused_total{reason=max_clients}", "tarsmq_acl_denials_total{action=publish}",
		"tarsmq_limit_actions_total{limit=throttled}", "tarsmq_retained_bytes"} {
		if _, ok := before[name]; !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}

	sub := mqtttest.Dial(t, "tcp", b.Addr().String(), 5)
	sub.Connect("dashboard", nil)
	sub.Subscribe("robot/#", 1)
	pub := mqtttest.Dial(t, "unix", b.SocketPath(), 5)
	pub.Connect("arm", nil)
	const n = 5
	for range n {
		if ack := pub.Publish("robot/arm/pose", []byte(envFrom("arm", "x")), 1, false); ack.ReasonCode != 0 {
			t.Fatalf("PUBACK %#x", ack.ReasonCode)
		}
	}
	for range n {
		sub.Ack(sub.Expect(packets.Publish, 0))
	}
	pub.Publish("robot/arm/state", []byte(envFrom("arm", "retained")), 1, true)
	sub.Ack(sub.Expect(packets.Publish, 0))
	pub.Publish("robot/arm/pose", []byte(`{"id":"nope"}`), 1, false) // refused: missing fields
	pub.Publish("robot/arm/pose", []byte(envFrom("leg", "x")), 1, false)
	h, err := envelope.New(envelope.TypeHealth, "arm", envelope.Health{OK: false, Error: "servo hot"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := h.Marshal()
	pub.Publish(envelope.HealthTopic("arm"), raw, 1, true)

	after := scrape(t, b)
	moved := func(name string, by float64) {
		t.Helper()
		if d := after[name] - before[name]; d < by {
			t.Errorf("%s moved by %v, want at least %v (before %v, after %v)", name, d, by, before[name], after[name])
		}
	}
	moved("tarsmq_clients_connected", 2)
	moved("tarsmq_messages_received_total", n+4)
	moved("tarsmq_messages_sent_total", n+1)
	moved("tarsmq_bytes_received_total", 100)
	moved("tarsmq_bytes_sent_total", 100)
	moved("tarsmq_retained_messages", 2)
	moved("tarsmq_retained_bytes", 200)
	moved("tarsmq_contract_rejections_total{rule=missing}", 1)
	moved("tarsmq_contract_rejections_total{rule=identity}", 1)
	moved("tarsmq_health_services", 1)
	moved("tarsmq_health_services_not_ok", 1)
	if after["tarsmq_store_size_bytes{part=vlog}"] <= 0 {
		t.Errorf("store size is %v", after["tarsmq_store_size_bytes{part=vlog}"])
	}
	if after["tarsmq_messages_received_total"] > before["tarsmq_messages_received_total"]+n+4+1 {
		t.Errorf("self-checks counted as messages: %v -> %v", before["tarsmq_messages_received_total"], after["tarsmq_messages_received_total"])
	}
}
