package client_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tarsmq/tarsmq/client"
)

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("MQTT_URL", "mqtt://stt:s3cret@127.0.0.1:1884")
	t.Setenv("MQTT_CLIENT_ID", "stt-worker")
	t.Setenv("MQTT_HEARTBEAT_INTERVAL", "2.5")
	t.Setenv("MQTT_RECONNECT_MIN_DELAY", "250ms")
	t.Setenv("MQTT_DEDUPE_TTL", "30")
	t.Setenv("MQTT_DEDUPE_MAX_ENTRIES", "2048")
	t.Setenv("MQTT_ENABLE_HEALTH", "true")
	cfg, err := client.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case cfg.HeartbeatInterval.D() != 2500*time.Millisecond, cfg.ReconnectMinDelay.D() != 250*time.Millisecond,
		cfg.ReconnectMaxDelay.D() != 5*time.Second, cfg.Keepalive.D() != 60*time.Second,
		cfg.DedupeTTL.D() != 30*time.Second, !cfg.EnableHealth, cfg.EnableHeartbeat:
		t.Fatalf("config %+v", cfg)
	}
	c, err := client.New(cfg)
	if err != nil || c.Source() != "stt-worker" {
		t.Fatalf("source %v %v", c, err)
	}
}

// Missing and bad values name their variable; a password never shows.
func TestConfigErrorsNameTheVariable(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"MQTT_CLIENT_ID": "x"}, "MQTT_URL is required"},
		{map[string]string{"MQTT_URL": "unix:///run/tarsmq/tarsmq.sock"}, "MQTT_CLIENT_ID is required"},
		{map[string]string{"MQTT_URL": "http://u:hunter2@h", "MQTT_CLIENT_ID": "x"}, "MQTT_URL: scheme \"http\""},
		{map[string]string{"MQTT_URL": "unix://relative", "MQTT_CLIENT_ID": "x"}, "MQTT_URL"},
		{map[string]string{"MQTT_URL": "mqtt://h", "MQTT_CLIENT_ID": "x", "MQTT_KEEPALIVE": "soon"}, "MQTT_KEEPALIVE"},
		{map[string]string{"MQTT_URL": "mqtt://h", "MQTT_CLIENT_ID": "x", "MQTT_DEDUPE_TTL": "10"}, "MQTT_DEDUPE_MAX_ENTRIES"},
		{map[string]string{"MQTT_URL": "mqtt://h", "MQTT_CLIENT_ID": "x", "MQTT_RECONNECT_MAX_DELAY": "0.2"}, "MQTT_RECONNECT_MAX_DELAY"},
	}
	for _, tc := range cases {
		for _, k := range []string{"MQTT_URL", "MQTT_CLIENT_ID", "MQTT_KEEPALIVE", "MQTT_DEDUPE_TTL", "MQTT_RECONNECT_MAX_DELAY"} {
			t.Setenv(k, tc.env[k]) // restored after the test
			if _, ok := tc.env[k]; !ok {
				os.Unsetenv(k)
			}
		}
		_, err := client.ConfigFromEnv()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.env, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("password in %q", err)
		}
	}
}
