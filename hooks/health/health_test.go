package health_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/admin"
	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/hooks/health"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

func healthEnv(source string, ok bool, event string) []byte {
	return []byte(fmt.Sprintf(`{"id":"%s-%s","type":"health.status","ts":%v,"source":%q,"data":{"ok":%v,"event":%q}}`,
		source, event, envelope.Seconds(time.Now()), source, ok, event))
}

func start(t *testing.T, cfg broker.Config, boot string) *broker.Broker {
	t.Helper()
	return brokertest.Start(t, cfg, brokertest.Logger(), broker.WithBootID(func() string { return boot }))
}

func getJSON(t *testing.T, b *broker.Broker, path string, v any) int {
	t.Helper()
	resp, err := http.Get("http://" + b.AdminAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	return resp.StatusCode
}

func report(t *testing.T, b *broker.Broker) map[string]admin.ServiceReport {
	t.Helper()
	var r admin.Report
	if code := getJSON(t, b, "/v1/health", &r); code != 200 {
		t.Fatalf("GET /v1/health: %d", code)
	}
	out := map[string]admin.ServiceReport{}
	for _, s := range r.Services {
		out[s.Source] = s
	}
	return out
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	brokertest.WaitFor(t, 10*time.Second, what, cond)
}

func TestHealthRecordedAndQueried(t *testing.T) {
	b := start(t, brokertest.Config(t), "boot-A")
	stt := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	stt.Connect("stt", nil)
	for _, ev := range []string{"starting", "ready"} {
		if ack := stt.Publish(envelope.HealthTopic("stt"), healthEnv("stt", true, ev), 1, true); ack.ReasonCode != 0 {
			t.Fatalf("health refused: %s", ack.Properties.ReasonString)
		}
	}
	// The PUBACK came after the store write: the record is there at once.
	s, ok := report(t, b)["stt"]
	if !ok || !s.OK || s.Event != "ready" || s.Boot != "boot-A" || !s.CurrentBoot || s.Received.IsZero() {
		t.Fatalf("report: %+v", s)
	}
	var h admin.HistoryReport
	getJSON(t, b, "/v1/health/stt/history?limit=5", &h)
	if len(h.Records) != 2 || h.Records[0].Event != "ready" || h.Records[1].Event != "starting" {
		t.Fatalf("history: %+v", h)
	}
	if code := getJSON(t, b, "/v1/health/stt/history?limit=x", nil); code != 400 {
		t.Fatalf("bad limit: %d", code)
	}
	getJSON(t, b, "/v1/health/nobody/history", &h)
	if len(h.Records) != 0 {
		t.Fatalf("history of nobody: %+v", h)
	}
}

// A service whose connection is cut looks dead; one that says goodbye with
// DISCONNECT keeps its own last word; a broker shutdown marks nobody.
func TestOfflineWhenConnectionLost(t *testing.T) {
	cfg := brokertest.Config(t)
	b := start(t, cfg, "boot-A")
	watch := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	watch.Connect("watch", nil)
	watch.Subscribe("system/health/#", 1)

	clean := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	clean.Connect("tts", nil)
	clean.Publish(envelope.HealthTopic("tts"), healthEnv("tts", false, "shutdown"), 1, true)
	crash := mqtttest.Dial(t, "tcp", b.Addr().String(), mqtttest.V311)
	crash.Connect("stt", nil)
	crash.Publish(envelope.HealthTopic("stt"), healthEnv("stt", true, "ready"), 1, true)
	for range 2 {
		watch.Ack(watch.Expect(packets.Publish, 0))
	}

	clean.Disconnect()
	crash.Kill()
	pk := watch.Expect(packets.Publish, 0) // stt's offline notice; tts's would have come first
	watch.Ack(pk)
	e, err := envelope.Parse(pk.Payload)
	if err != nil || pk.TopicName != envelope.HealthTopic("stt") {
		t.Fatalf("notice %s %q: %v", pk.TopicName, pk.Payload, err)
	}
	h, err := envelope.ParseHealth(e.Data)
	if err != nil || h.OK || h.Event != health.EventOffline || h.Error != health.ErrorConnectionLost || e.Source != "stt" {
		t.Fatalf("offline notice %+v %+v", e, h)
	}
	if age := time.Since(e.Time()); age < 0 || age > 10*time.Second {
		t.Fatalf("offline ts %v is not the moment of detection", e.Time())
	}
	if r := report(t, b); r["stt"].Event != health.EventOffline || r["tts"].Event != "shutdown" {
		t.Fatalf("report %+v", r)
	}
	if retained := b.Server().Topics.Messages(envelope.HealthTopic("stt")); len(retained) != 1 || string(retained[0].Payload) != string(pk.Payload) {
		t.Fatal("the offline notice is not the retained health")
	}
	var hist admin.HistoryReport
	getJSON(t, b, "/v1/health/stt/history", &hist)
	if len(hist.Records) != 2 || hist.Records[0].Event != health.EventOffline {
		t.Fatalf("offline not in history: %+v", hist)
	}

	// Shutdown: a service still connected is not marked offline.
	live := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	live.Connect("llm", nil)
	live.Publish(envelope.HealthTopic("llm"), healthEnv("llm", true, "ready"), 1, true)
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	b = start(t, cfg, "boot-A")
	if r := report(t, b); r["llm"].Event != "ready" {
		t.Fatalf("broker shutdown marked llm %q", r["llm"].Event)
	}
}

// A broker restart is no connection loss: the sessions it restores (mochi
// reports each as disconnected while loading it) are not marked offline
// while their services take their time to reconnect.
func TestRestoredSessionsAreNotMarkedOffline(t *testing.T) {
	cfg := brokertest.Config(t)
	b := start(t, cfg, "boot-A")
	persistent := func(pk *packets.Packet) {
		pk.Connect.Clean = false
		pk.Properties.SessionExpiryInterval = 3600
		pk.Properties.SessionExpiryIntervalFlag = true
	}
	for _, name := range []string{"nav", "probe"} {
		c := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
		c.Connect(name, persistent)
		c.Publish(envelope.HealthTopic(name), healthEnv(name, true, "ready"), 1, true)
		c.Disconnect()
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	b = start(t, cfg, "boot-A")
	// probe comes back and then loses its connection: once it is marked
	// offline, nav's grace period, which began earlier, is over too.
	probe := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	probe.Connect("probe", persistent)
	probe.Kill()
	poll(t, "probe marked offline", func() bool { return report(t, b)["probe"].Event == health.EventOffline })
	if r := report(t, b)["nav"]; !r.OK || r.Event != "ready" {
		t.Fatalf("nav, restored and not yet back, is %+v", r)
	}
}

// After a reboot the retained health is back at once, and records from the
// earlier boot say so.
func TestHealthAcrossReboot(t *testing.T) {
	cfg := brokertest.Config(t)
	b := start(t, cfg, "boot-A")
	stt := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	stt.Connect("stt", nil)
	msg := healthEnv("stt", true, "ready")
	stt.Publish(envelope.HealthTopic("stt"), msg, 1, true)
	hb, _ := json.Marshal(envelope.NewHeartbeat(time.Now()))
	stt.Publish(envelope.KeepaliveTopic("stt"), hb, 0, false)
	poll(t, "the heartbeat to be seen", func() bool { return report(t, b)["stt"].LastSeen != nil })
	stt.Disconnect()
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	b = start(t, cfg, "boot-B")
	sub := mqtttest.Dial(t, "tcp", b.Addr().String(), mqtttest.V311)
	sub.Connect("late", nil)
	sub.Subscribe("system/health/#", 0)
	if pk := sub.Expect(packets.Publish, 0); string(pk.Payload) != string(msg) {
		t.Fatalf("retained health after reboot: %q", pk.Payload)
	}
	s := report(t, b)["stt"]
	if s.CurrentBoot || s.Boot != "boot-A" || !s.OK || s.LastSeen == nil {
		t.Fatalf("record from the earlier boot: %+v", s)
	}
}

// A damaged database ends in a running broker that says what it did.
func TestDamagedStoreEndsInRunningBroker(t *testing.T) {
	cfg := brokertest.Config(t)
	b := start(t, cfg, "boot-A")
	stt := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	stt.Connect("stt", nil)
	stt.Publish(envelope.HealthTopic("stt"), healthEnv("stt", true, "ready"), 1, true)
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(cfg.Store.Dir, "db", "MANIFEST")
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	for i := 8; i < len(data); i += 5 {
		data[i] ^= 0x5a
	}
	if err := os.WriteFile(manifest, data, 0o600); err != nil {
		t.Fatal(err)
	}

	b = start(t, cfg, "boot-A")
	var r admin.Report
	getJSON(t, b, "/v1/health", &r)
	if r.Store.Recovered == nil || r.Store.Recovered.MovedTo == "" {
		t.Fatalf("recovery not reported: %+v", r.Store)
	}
	if _, err := os.Stat(filepath.Join(r.Store.Recovered.MovedTo, "MANIFEST")); err != nil {
		t.Fatalf("damaged copy not kept: %v", err)
	}
	stt = mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	stt.Connect("stt", nil)
	if ack := stt.Publish(envelope.HealthTopic("stt"), healthEnv("stt", true, "ready"), 1, true); ack.ReasonCode != 0 {
		t.Fatal("broker does not work after recovery")
	}
	if _, ok := report(t, b)["stt"]; !ok {
		t.Fatal("health not recorded after recovery")
	}
}
