package broker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tarsmq/tarsmq/bridge"
	"github.com/tarsmq/tarsmq/broker"
)

func TestDefaultConfigIsValid(t *testing.T) {
	if err := broker.DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

// Every validation error names the field and says what to do.
func TestConfigValidationNamesTheField(t *testing.T) {
	rule := []bridge.Rule{{Topic: "commands/#", QoS: 1}}
	cases := []struct {
		edit  func(*broker.Config)
		field string
		fix   string
	}{
		{func(c *broker.Config) { c.Listeners.Unix.Path, c.Listeners.TCP.Address = "", "" }, "listeners:", "set listeners.unix.path"},
		{func(c *broker.Config) { c.Listeners.Unix.Path = "rel.sock" }, "listeners.unix.path:", "absolute path"},
		{func(c *broker.Config) { c.Listeners.Unix.Path = "/" + strings.Repeat("x", 120) }, "listeners.unix.path:", "shorter"},
		{func(c *broker.Config) { c.Listeners.Unix.Mode = "0999" }, "listeners.unix.mode:", `"0660"`},
		{func(c *broker.Config) { c.Listeners.Unix.Group = "no-such-group-tarsmq" }, "listeners.unix.group:", "existing group"},
		{func(c *broker.Config) { c.Listeners.TCP.Address = "1883" }, "listeners.tcp.address:", "127.0.0.1:1883"},
		{func(c *broker.Config) { c.Listeners.TCP.Address = "0.0.0.0:1883" }, "listeners.tcp.address:", "listeners.tcp.allow_remote"},
		{func(c *broker.Config) { c.Listeners.WebSocket.Address = "192.168.1.5:8080" }, "listeners.websocket.address:", "listeners.websocket.allow_remote"},
		{func(c *broker.Config) { c.Listeners.TCP.Address = "127.0.0.1:99999" }, "listeners.tcp.address:", "0 to 65535"},
		{func(c *broker.Config) { c.Limits.MaxPacketSize = 10 }, "limits.max_packet_size:", "1KiB"},
		{func(c *broker.Config) { c.Limits.MaxInflight = 0 }, "limits.max_inflight:", "1 to 65535"},
		{func(c *broker.Config) { c.Limits.MaxQueuedMessages = 0 }, "limits.max_queued_messages:", "at least 1"},
		{func(c *broker.Config) { c.Limits.MaxSessionMessages = 100 }, "limits.max_session_messages:", "raise it"},
		{func(c *broker.Config) { c.SlowSubscriber.Policy = "wait" }, "slow_subscriber.policy:", `"qos", "block" or "drop"`},
		{func(c *broker.Config) { c.SlowSubscriber.Policy, c.SlowSubscriber.BlockTimeout = broker.PolicyBlock, 0 }, "slow_subscriber.block_timeout:", "1s"},
		{func(c *broker.Config) { c.SlowSubscriber.WriteTimeout = time.Millisecond }, "slow_subscriber.write_timeout:", "30s"},
		{func(c *broker.Config) { c.Bridges = []bridge.Config{{Name: "fleet", URL: "http://x", In: rule}} }, "bridges[0].url:", "mqtts://"},
		{func(c *broker.Config) { c.Bridges = []bridge.Config{{Name: "fleet", URL: "mqtt://u:pw@x", In: rule}} }, "bridges[0].url:", "password_file"},
		{func(c *broker.Config) { c.Bridges = []bridge.Config{{Name: "fleet", URL: "mqtt://x"}} }, "bridges[0].out:", "remote_prefix"},
		{func(c *broker.Config) { c.Bridges = []bridge.Config{{Name: "a/b", URL: "mqtt://x", In: rule}} }, "bridges[0].name:", "short name"},
		{func(c *broker.Config) {
			c.Bridges = []bridge.Config{{Name: "fleet", URL: "mqtt://x", Out: []bridge.Rule{{Topic: "a/#/b", QoS: 2}}}}
		}, "bridges[0].out[0].topic:", "topic filter"},
		{func(c *broker.Config) {
			c.Bridges = []bridge.Config{{Name: "fleet", URL: "mqtt://x", Out: []bridge.Rule{{Topic: "a/#", QoS: 2}}}}
		}, "bridges[0].out[0].qos:", "use 0 or 1"},
		{func(c *broker.Config) {
			c.Bridges = []bridge.Config{{Name: "fleet", URL: "mqtt://x", In: rule}, {Name: "fleet", URL: "mqtt://y", In: rule}}
		}, "bridges[1].name:", "must differ"},
		{func(c *broker.Config) {
			c.Bridges = []bridge.Config{{Name: "fleet", URL: "mqtt://x", In: rule, Queue: bridge.QueueConfig{Overflow: "lose"}}}
		}, "bridges[0].queue.overflow:", "drop_oldest"},
	}
	for _, tc := range cases {
		cfg := broker.DefaultConfig()
		tc.edit(&cfg)
		err := cfg.Validate()
		if err == nil {
			t.Errorf("%s: accepted", tc.field)
			continue
		}
		if !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), tc.fix) {
			t.Errorf("error %q does not name %q with fix %q", err, tc.field, tc.fix)
		}
		if _, err := broker.New(cfg, nil); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("New accepted an invalid config (%s): %v", tc.field, err)
		}
	}
}

func TestRemoteAddressAllowedWhenAsked(t *testing.T) {
	cfg := broker.DefaultConfig()
	cfg.Listeners.TCP.Address = "0.0.0.0:1883"
	cfg.Listeners.TCP.AllowRemote = true
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Listeners.TCP.Address = "localhost:1883"
	cfg.Listeners.TCP.AllowRemote = false
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestDefaultSocketPath(t *testing.T) {
	t.Setenv("RUNTIME_DIRECTORY", "/run/tarsmq:/run/other")
	if got := broker.DefaultSocketPath(); got != "/run/tarsmq/tarsmq.sock" {
		t.Errorf("under systemd: %s", got)
	}
	t.Setenv("RUNTIME_DIRECTORY", "")
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	if got := broker.DefaultSocketPath(); got != "/run/user/1000/tarsmq/tarsmq.sock" {
		t.Errorf("with XDG_RUNTIME_DIR: %s", got)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if got := broker.DefaultSocketPath(); !strings.HasSuffix(got, "/tarsmq.sock") || !strings.Contains(got, "tarsmq-") {
		t.Errorf("fallback: %s", got)
	}
}
