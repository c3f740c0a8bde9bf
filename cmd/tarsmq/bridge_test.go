package main_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/bridge"
	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

// bridgesOf reads /v1/bridges of the broker whose admin listener is admin.
func bridgesOf(t *testing.T, admin string) []bridge.State {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/v1/bridges")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Bridges []bridge.State }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || len(body.Bridges) != 1 {
		t.Fatalf("/v1/bridges: %v %+v", err, body)
	}
	return body.Bridges
}

// The real binary with a bridge to an upstream that is not there yet:
// QoS 1 messages queue, visible in /v1/bridges, /metrics and `tarsmq
// health`; the broker is killed with SIGKILL and restarted, and once the
// upstream is up every queued message reaches it once and in order.
func TestBridgeQueueSurvivesSIGKILL(t *testing.T) {
	const n = 200
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upAddr := ln.Addr().String()
	ln.Close()
	conf := filepath.Join(dir, "tarsmq.yaml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`device_id: robot5
bridges:
  - name: fleet
    url: tcp://%s
    reconnect_min: 50ms
    reconnect_max: 200ms
    first_connect_jitter: 1ms
    out:
      - {topic: "telemetry/#", remote_prefix: "fleet/{device_id}/", qos: 1}
`, upAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"TARSMQ_CONFIG=" + conf}
	s := startServeWith(t, dir, nil, env)
	pub := mqtttest.Dial(t, "unix", s.socket, mqtttest.V5)
	pub.Connect("imu", nil)
	for i := range n {
		e, _ := envelope.New("imu.sample", "imu", map[string]int{"i": i})
		b, _ := e.Marshal()
		if ack := pub.Publish("telemetry/imu", b, 1, false); ack.ReasonCode != 0 {
			t.Fatalf("publish %d: %#x", i, ack.ReasonCode)
		}
	}
	if st := bridgesOf(t, s.admin)[0]; st.Queued != n || st.Connected || st.LastError == "" {
		t.Fatalf("before the kill: %+v", st)
	}
	metrics := httpBody(t, "http://"+s.admin+"/metrics")
	if !strings.Contains(metrics, fmt.Sprintf(`tarsmq_bridge_queued_messages{bridge="fleet"} %d`, n)) ||
		!strings.Contains(metrics, `tarsmq_bridge_connected{bridge="fleet"} 0`) {
		t.Fatalf("metrics:\n%s", grepLines(metrics, "tarsmq_bridge"))
	}
	table, errOut, code := run(t, serveEnv(s.dir, s.admin), "health")
	if code != 0 || !strings.Contains(table, "fleet") || !strings.Contains(table, fmt.Sprint(n, " (")) || !strings.Contains(table, "down") {
		t.Fatalf("tarsmq health: exit %d\n%s%s", code, table, errOut)
	}
	pub.Kill()
	s.stop(t, syscall.SIGKILL)

	upCfg := brokertest.Config(t)
	upCfg.Contract.BindSource = false // it relays other services' envelopes
	upCfg.Listeners.TCP.Address = upAddr
	up := brokertest.Start(t, upCfg, brokertest.Logger())
	fleet := mqtttest.Dial(t, "tcp", up.Addr().String(), mqtttest.V5)
	fleet.Connect("fleet-db", nil)
	fleet.Subscribe("fleet/robot5/#", 1)

	s = startServeWith(t, dir, nil, env)
	if !strings.Contains(s.log(), fmt.Sprintf(`"queued":%d`, n)) {
		t.Fatalf("the restarted broker did not report its queue:\n%s", s.log())
	}
	for i := range n {
		pk, err := fleet.Next(packets.Publish, 0, 15*time.Second)
		if err != nil {
			t.Fatalf("message %d of %d: %v", i, n, err)
		}
		fleet.Ack(pk)
		e, err := envelope.Parse(pk.Payload)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := envelope.Decode[map[string]int](e)
		if pk.TopicName != "fleet/robot5/telemetry/imu" || d["i"] != i {
			t.Fatalf("message %d: %s %s", i, pk.TopicName, pk.Payload)
		}
	}
	if pk, err := fleet.Next(packets.Publish, 0, 300*time.Millisecond); err == nil {
		t.Fatalf("one more: %s", pk.Payload)
	}
	var st bridge.State
	if !brokertest.Poll(10*time.Second, func() bool {
		st = bridgesOf(t, s.admin)[0]
		return st.Queued == 0 && st.Connected && st.ForwardedOut == n
	}) {
		t.Fatalf("after the restart: %+v", st)
	}
}

func httpBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// `tarsmq config` shows a bridge's settings but not its password.
func TestConfigRedactsBridgePassword(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "tarsmq.yaml")
	if err := os.WriteFile(conf, []byte(`bridges:
  - name: fleet
    url: mqtts://fleet.example.com
    username: robot
    password: hunter2-bridge
    out: [{topic: "system/health/#", remote_prefix: "fleet/{device_id}/", qos: 1}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, []string{"TARSMQ_CONFIG="}, "config", "--config", conf)
	if code != 0 || strings.Contains(out, "hunter2-bridge") || !strings.Contains(out, "fleet.example.com") {
		t.Fatalf("exit %d:\n%s%s", code, out, errOut)
	}
}
