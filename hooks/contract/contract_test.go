package contract_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/hooks/contract"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
	"github.com/tarsmq/tarsmq/internal/passwd"
)

// env is a valid envelope from source; edit may change its JSON text.
func env(source, typ, data string) []byte {
	return []byte(fmt.Sprintf(`{"id":"9f1c2b3a4d5e4f60a1b2c3d4e5f60718","type":%q,"ts":1729123456.789,"source":%q,"data":%s}`, typ, source, data))
}

const invalidTS = `{"id":"a","type":"stt.final","timestamp":1729123456.789,"source":"pub","data":{}}`

// setup starts a broker, a v5 subscriber to # and returns them.
func setup(t *testing.T, edit func(*broker.Config)) (*broker.Broker, *mqtttest.Client) {
	t.Helper()
	b := brokertest.Run(t, edit)
	sub := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	sub.Connect("sub", nil)
	sub.Subscribe("#", 2)
	return b, sub
}

// expectOnly asserts that the next message sub gets is want: the invalid
// one published before it by the same client was never delivered.
func expectOnly(t *testing.T, sub *mqtttest.Client, topic string, want []byte) {
	t.Helper()
	pk := sub.Expect(packets.Publish, 0)
	if pk.TopicName != topic || !bytes.Equal(pk.Payload, want) {
		t.Fatalf("subscriber got %s %q, want %s %q", pk.TopicName, pk.Payload, topic, want)
	}
	if pk.FixedHeader.Qos > 0 {
		sub.Ack(pk)
	}
}

func notRetained(t *testing.T, b *broker.Broker, topic string) {
	t.Helper()
	if m := b.Server().Topics.Messages(topic); len(m) != 0 {
		t.Fatalf("invalid message retained on %s: %q", topic, m[0].Payload)
	}
}

// Every rejection path over the wire: MQTT 5 QoS 1/2 get the reason, QoS 0
// and MQTT 3.1.1 are acknowledged as usual and dropped. Nothing invalid
// reaches the subscriber or the retained store.
func TestRejectionPaths(t *testing.T) {
	b, sub := setup(t, nil)
	good := env("pub", "stt.final", `{"text":"after"}`)
	for _, tc := range []struct {
		version, qos byte
	}{{mqtttest.V5, 1}, {mqtttest.V5, 2}, {mqtttest.V5, 0}, {mqtttest.V311, 1}, {mqtttest.V311, 2}, {mqtttest.V311, 0}} {
		name := fmt.Sprintf("v%d-qos%d", tc.version, tc.qos)
		t.Run(name, func(t *testing.T) {
			topic := "stt/final/" + name
			pub := mqtttest.Dial(t, "tcp", b.Addr().String(), tc.version)
			pub.Connect("pub", nil)
			var ack packets.Packet
			switch tc.qos {
			case 0:
				pub.Publish(topic, []byte(invalidTS), 0, true)
			case 1:
				ack = pub.Publish(topic, []byte(invalidTS), 1, true)
			case 2:
				ack = pub.PublishQoS2(topic, []byte(invalidTS), true)
			}
			switch {
			case tc.version == mqtttest.V5 && tc.qos > 0:
				if ack.ReasonCode != contract.CodeInvalid {
					t.Fatalf("ack reason %#x, want 0x99", ack.ReasonCode)
				}
				if rs := ack.Properties.ReasonString; !strings.Contains(rs, `"ts"`) || !strings.Contains(rs, "timestamp") {
					t.Fatalf("reason string %q does not name the field", rs)
				}
			case tc.qos > 0:
				if ack.ReasonCode >= 0x80 {
					t.Fatalf("3.1.1 ack carries failure %#x", ack.ReasonCode)
				}
			}
			// The same client goes on, and the next thing the subscriber sees
			// is its valid message.
			if tc.qos == 1 {
				if ack := pub.Publish(topic, good, 1, false); ack.ReasonCode != 0 {
					t.Fatalf("valid publish after a rejection: %#x", ack.ReasonCode)
				}
			} else {
				pub.Publish(topic, good, 0, false)
			}
			expectOnly(t, sub, topic, good)
			notRetained(t, b, topic)
		})
	}
	if n := b.Contract().Rejections()["pub"][envelope.RuleTimestamp]; n != 6 {
		t.Fatalf("counted %d timestamp rejections for pub, want 6: %v", n, b.Contract().Rejections())
	}
}

// Envelopes exactly as the Python services write them pass through
// unchanged, byte for byte.
func TestPythonEnvelopesPassUnchanged(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "envelope", "testdata", "python", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	b, sub := setup(t, nil)
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		e, err := envelope.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		topic := "python/" + strings.ReplaceAll(e.Type, ".", "/")
		if e.Type == envelope.TypeHealth {
			topic = envelope.HealthTopic(e.Source)
		}
		pub := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V311) // the Python clients speak 3.1.1
		pub.Connect(e.Source, nil)
		pub.Publish(topic, raw, 1, false)
		expectOnly(t, sub, topic, raw)
		pub.Disconnect()
	}
}

func TestExemptTopics(t *testing.T) {
	b, sub := setup(t, nil)
	pub := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	pub.Connect("stt-worker", nil)
	hb, _ := json.Marshal(envelope.NewHeartbeat(time.Now()))
	if ack := pub.Publish(envelope.KeepaliveTopic("stt-worker"), hb, 1, false); ack.ReasonCode != 0 {
		t.Fatalf("heartbeat rejected: %#x %s", ack.ReasonCode, ack.Properties.ReasonString)
	}
	expectOnly(t, sub, envelope.KeepaliveTopic("stt-worker"), hb)

	cfg := brokertest.Config(t)
	cfg.Contract.Exempt = append(cfg.Contract.Exempt, "sensors/raw/#")
	b2 := brokertest.Start(t, cfg, brokertest.Logger())
	sub2 := mqtttest.Dial(t, "tcp", b2.Addr().String(), mqtttest.V311)
	sub2.Connect("sub2", nil)
	sub2.Subscribe("sensors/#", 1)
	pub2 := mqtttest.Dial(t, "tcp", b2.Addr().String(), mqtttest.V5)
	pub2.Connect("lidar", nil)
	pub2.Publish("sensors/raw/lidar", []byte{0, 1, 2, 0xff}, 1, false)
	expectOnly(t, sub2, "sensors/raw/lidar", []byte{0, 1, 2, 0xff})
	if ack := pub2.Publish("sensors/cooked", []byte{0, 1}, 1, false); ack.ReasonCode != contract.CodeInvalid {
		t.Fatalf("non-exempt binary payload: %#x", ack.ReasonCode)
	}
}

// A service cannot publish another's health, nor claim another's source.
func TestIdentity(t *testing.T) {
	b, sub := setup(t, nil)
	stt := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	stt.Connect("stt-worker", nil)
	health := func(source string) []byte { return env(source, envelope.TypeHealth, `{"ok":true,"event":"ready"}`) }

	for _, tc := range []struct {
		name, topic string
		payload     []byte
		code        byte
	}{
		{"other service's health topic", envelope.HealthTopic("tts-worker"), health("tts-worker"), contract.CodeUnauthorized},
		{"own topic, other source", envelope.HealthTopic("stt-worker"), health("tts-worker"), contract.CodeUnauthorized},
		{"health without ok", envelope.HealthTopic("stt-worker"), env("stt-worker", envelope.TypeHealth, `{"event":"ready"}`), contract.CodeInvalid},
		{"health of the wrong type", envelope.HealthTopic("stt-worker"), env("stt-worker", "stt.final", `{"ok":true}`), contract.CodeInvalid},
		{"other source elsewhere", "stt/final", env("tts-worker", "stt.final", `{}`), contract.CodeUnauthorized},
	} {
		ack := stt.Publish(tc.topic, tc.payload, 1, true)
		if ack.ReasonCode != tc.code || ack.Properties.ReasonString == "" {
			t.Errorf("%s: reason %#x %q, want %#x", tc.name, ack.ReasonCode, ack.Properties.ReasonString, tc.code)
		}
		notRetained(t, b, tc.topic)
	}
	own := health("stt-worker")
	if ack := stt.Publish(envelope.HealthTopic("stt-worker"), own, 1, true); ack.ReasonCode != 0 {
		t.Fatalf("own health refused: %#x %s", ack.ReasonCode, ack.Properties.ReasonString)
	}
	expectOnly(t, sub, envelope.HealthTopic("stt-worker"), own)

	// A claimed username is no identity...
	claim := func(b *broker.Broker, password string) *mqtttest.Client {
		c := mqtttest.Dial(t, "tcp", b.Addr().String(), mqtttest.V5)
		c.Connect("random-1234", func(pk *packets.Packet) {
			pk.Connect.Username, pk.Connect.UsernameFlag = []byte("tts-worker"), true
			pk.Connect.Password, pk.Connect.PasswordFlag = []byte(password), password != ""
		})
		return c
	}
	if ack := claim(b, "").Publish(envelope.HealthTopic("tts-worker"), health("tts-worker"), 1, false); ack.ReasonCode != contract.CodeUnauthorized {
		t.Fatalf("health under an unverified username: %#x, want %#x", ack.ReasonCode, contract.CodeUnauthorized)
	}
	// ...a verified one is.
	pwfile := filepath.Join(t.TempDir(), "passwd")
	if err := passwd.Set(pwfile, "tts-worker", "s3cret", bcrypt.MinCost); err != nil {
		t.Fatal(err)
	}
	authed := brokertest.Run(t, func(c *broker.Config) { c.Auth.PasswordFile = pwfile })
	if ack := claim(authed, "s3cret").Publish(envelope.HealthTopic("tts-worker"), health("tts-worker"), 1, false); ack.ReasonCode != 0 {
		t.Fatalf("health under the verified username refused: %#x %s", ack.ReasonCode, ack.Properties.ReasonString)
	}

	// With bind_source off, other topics take any source.
	cfg := brokertest.Config(t)
	cfg.Contract.BindSource = false
	loose := brokertest.Start(t, cfg, brokertest.Logger())
	c := mqtttest.Dial(t, "unix", loose.SocketPath(), mqtttest.V5)
	c.Connect("router-1", nil)
	if ack := c.Publish("llm/request", env("router", "llm.request", `{}`), 1, false); ack.ReasonCode != 0 {
		t.Fatalf("bind_source off: %#x", ack.ReasonCode)
	}
	if ack := c.Publish(envelope.HealthTopic("router"), health("router"), 1, false); ack.ReasonCode != contract.CodeUnauthorized {
		t.Fatalf("bind_source off still binds health: %#x", ack.ReasonCode)
	}
}

func TestTopicRules(t *testing.T) {
	b, sub := setup(t, func(c *broker.Config) {
		c.Contract.Rules = []contract.Rule{{
			Topic: "stt/final",
			Type:  "stt.final",
			Schema: map[string]any{
				"type":     "object",
				"required": []any{"text"},
				"properties": map[string]any{
					"text":       map[string]any{"type": "string"},
					"confidence": map[string]any{"type": "number", "minimum": 0, "maximum": 1},
				},
			},
		}}
	})
	pub := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	pub.Connect("stt-worker", nil)
	for _, tc := range []struct {
		payload []byte
		want    string
	}{
		{env("stt-worker", "stt.partial", `{"text":"hi"}`), `"type"`},
		{env("stt-worker", "stt.final", `{"confidence":0.5}`), `missing property 'text'`},
		{env("stt-worker", "stt.final", `{"text":"hi","confidence":7}`), `/confidence`},
	} {
		ack := pub.Publish("stt/final", tc.payload, 1, false)
		if ack.ReasonCode != contract.CodeInvalid || !strings.Contains(ack.Properties.ReasonString, tc.want) {
			t.Errorf("%s: %#x %q, want 0x99 naming %s", tc.payload, ack.ReasonCode, ack.Properties.ReasonString, tc.want)
		}
	}
	ok := env("stt-worker", "stt.final", `{"text":"hi","confidence":0.5}`)
	if ack := pub.Publish("stt/final", ok, 1, false); ack.ReasonCode != 0 {
		t.Fatalf("valid message refused: %s", ack.Properties.ReasonString)
	}
	expectOnly(t, sub, "stt/final", ok)
	if n := b.Contract().Rejections()["stt-worker"]; n[envelope.RuleSchema] != 2 || n[envelope.RuleTypeNotHere] != 1 {
		t.Fatalf("counts %v", n)
	}
}

func TestRuleConfigErrorsNameTheKey(t *testing.T) {
	cfg := contract.DefaultConfig()
	cfg.Exempt = []string{"a/#/b"}
	cfg.Rules = []contract.Rule{
		{Topic: "ok/topic", Type: "Bad Type"},
		{Topic: "x", Schema: map[string]any{"type": "no-such-type"}},
		{Topic: "y", SchemaFile: "/nonexistent/schema.json"},
	}
	err := cfg.Validate()
	for _, want := range []string{"contract.exempt[0]", "contract.rules[0].type", "contract.rules[1].schema", "contract.rules[2].schema_file"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s missing from %v", want, err)
		}
	}
}

// A broken publisher is logged once per window, not once per message; with
// enforce off its messages are delivered but still counted; with republish
// on each rejection is announced as an envelope.
func TestObservability(t *testing.T) {
	var logs brokertest.LogBuffer
	cfg := brokertest.Config(t)
	cfg.Contract.Enforce = false
	cfg.Contract.Republish = true
	b := brokertest.Start(t, cfg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	}()
	watch := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	watch.Connect("watch", nil)
	watch.Subscribe(contract.RejectedTopicPrefix+"#", 0)
	sub := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	sub.Connect("sub", nil)
	sub.Subscribe("noisy/#", 0)

	pub := mqtttest.Dial(t, "tcp", b.Addr().String(), mqtttest.V311)
	pub.Connect("pub", nil)
	for range 50 {
		pub.Publish("noisy/x", []byte("not an envelope"), 1, false)
	}
	for range 50 { // delivered: enforce is off
		expectOnly(t, sub, "noisy/x", []byte("not an envelope"))
	}
	if got := b.Contract().RejectedTotal(); got != 50 {
		t.Fatalf("counted %d, want 50", got)
	}
	if n := strings.Count(logs.String(), "breaks the envelope contract"); n != 1 {
		t.Fatalf("%d warnings for 50 bad messages, want 1:\n%s", n, logs.String())
	}
	pk := watch.Expect(packets.Publish, 0)
	e, err := envelope.Parse(pk.Payload)
	if err != nil || pk.TopicName != contract.RejectedTopicPrefix+"pub" || e.Type != contract.TypeRejected {
		t.Fatalf("rejection notice %s %q: %v", pk.TopicName, pk.Payload, err)
	}
	r, err := envelope.Decode[contract.Rejection](e)
	if err != nil || r.Client != "pub" || r.Topic != "noisy/x" || r.Rule != envelope.RuleNotJSON {
		t.Fatalf("rejection %+v %v", r, err)
	}
}

// mochi sends a will without OnPublish; one that breaks the contract is
// removed at CONNECT and never sent.
func TestWills(t *testing.T) {
	b, sub := setup(t, nil)
	connectWithWill := func(id, topic string, payload []byte) *mqtttest.Client {
		c := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
		c.Connect(id, func(pk *packets.Packet) {
			pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload, pk.Connect.WillQos = true, topic, payload, 1
		})
		return c
	}
	offline := env("arm", envelope.TypeHealth, `{"ok":false,"event":"offline"}`)
	for _, tc := range []struct {
		id, topic string
		payload   []byte
	}{
		{"arm", "robot/arm/state", []byte("gone")},                    // not an envelope
		{"arm", envelope.HealthTopic("gripper"), offline},             // another service's health
		{"arm", "robot/arm/state", env("gripper", "arm.state", `{}`)}, // another source
	} {
		connectWithWill(tc.id, tc.topic, tc.payload).Disconnect() // a clean DISCONNECT sends no will
	}
	// Abrupt ends, which do send wills: only the valid one arrives.
	bad := connectWithWill("arm", "robot/arm/state", []byte("gone"))
	good := connectWithWill("arm2", envelope.HealthTopic("arm2"), env("arm2", envelope.TypeHealth, `{"ok":false,"event":"offline"}`))
	n := b.Connections()
	bad.Kill()
	// until the broker has handled the crash, will included
	if !brokertest.Poll(5*time.Second, func() bool { return b.Connections() == n-1 }) {
		t.Fatal("broker did not notice the dropped connection")
	}
	good.Kill()
	pk := sub.Expect(packets.Publish, 0)
	if pk.TopicName != envelope.HealthTopic("arm2") {
		t.Fatalf("got will on %s: %q", pk.TopicName, pk.Payload)
	}
	if n := b.Contract().Rejections()["arm"]; n[envelope.RuleNotJSON] != 2 || n[envelope.RuleIdentity] != 2 {
		t.Fatalf("counts %v", n)
	}
}

// An empty retained message clears the topic; on a health topic only the
// service itself may clear its health.
func TestClearRetained(t *testing.T) {
	b, _ := setup(t, nil)
	stt := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	stt.Connect("stt-worker", nil)
	stt.Publish(envelope.HealthTopic("stt-worker"), env("stt-worker", envelope.TypeHealth, `{"ok":true}`), 1, true)
	other := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	other.Connect("tts-worker", nil)
	if ack := other.Publish(envelope.HealthTopic("stt-worker"), nil, 1, true); ack.ReasonCode != contract.CodeUnauthorized {
		t.Fatalf("another service cleared stt's health: %#x", ack.ReasonCode)
	}
	if len(b.Server().Topics.Messages(envelope.HealthTopic("stt-worker"))) != 1 {
		t.Fatal("health gone")
	}
	if ack := stt.Publish(envelope.HealthTopic("stt-worker"), nil, 1, true); ack.ReasonCode != 0 {
		t.Fatalf("own clear refused: %#x %s", ack.ReasonCode, ack.Properties.ReasonString)
	}
	if len(b.Server().Topics.Messages(envelope.HealthTopic("stt-worker"))) != 0 {
		t.Fatal("health not cleared")
	}
}

// Reload swaps the rules while the publisher stays connected; a config
// that does not compile changes nothing.
func TestReloadRules(t *testing.T) {
	b, sub := setup(t, nil)
	pub := mqtttest.Dial(t, "unix", b.SocketPath(), mqtttest.V5)
	pub.Connect("pub", nil)
	speech := env("pub", "stt.final", `{"text":"hi"}`)
	if ack := pub.Publish("stt/final", speech, 1, false); ack.ReasonCode != 0 {
		t.Fatalf("before reload: %#x", ack.ReasonCode)
	}
	expectOnly(t, sub, "stt/final", speech)

	cfg := b.Contract().Config()
	cfg.Rules = []contract.Rule{{Topic: "stt/#", Type: "stt.partial"}}
	if err := b.Contract().Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if ack := pub.Publish("stt/final", speech, 1, false); ack.ReasonCode != contract.CodeInvalid {
		t.Fatalf("after reload: %#x, want %#x", ack.ReasonCode, contract.CodeInvalid)
	}

	bad := cfg
	bad.Rules = []contract.Rule{{Topic: "stt/#", Schema: map[string]any{"type": 7}}}
	if err := b.Contract().Reload(bad); err == nil || !strings.Contains(err.Error(), "contract.rules[0].schema") {
		t.Fatalf("bad schema: %v", err)
	}
	if got := b.Contract().Config().Rules[0].Type; got != "stt.partial" {
		t.Fatalf("a failed reload changed the rules: %q", got)
	}
	partial := env("pub", "stt.partial", `{"text":"h"}`)
	if ack := pub.Publish("stt/final", partial, 1, false); ack.ReasonCode != 0 {
		t.Fatalf("after failed reload: %#x", ack.ReasonCode)
	}
	expectOnly(t, sub, "stt/final", partial)
}
