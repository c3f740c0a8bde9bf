package envelope

import (
	"encoding/json"
	"strings"
	"time"
)

// TypeHealth is the type of health envelopes.
const TypeHealth = "health.status"

// Health is the data of a health.status envelope, which a service publishes
// retained at QoS 1 to HealthTopic(source).
type Health struct {
	OK    bool   `json:"ok"`
	Event string `json:"event,omitempty"` // e.g. "ready", "shutdown", "reconnected"
	Error string `json:"error,omitempty"` // what is wrong, when OK is false
}

// HealthTopicPrefix is where health goes: system/health/{source}.
const HealthTopicPrefix = "system/health/"

// HealthTopic is the topic of source's health.
func HealthTopic(source string) string { return HealthTopicPrefix + source }

// HealthService returns the service a health topic names, if topic is one.
func HealthService(topic string) (string, bool) {
	name, ok := strings.CutPrefix(topic, HealthTopicPrefix)
	if !ok || name == "" || strings.Contains(name, "/") {
		return "", false
	}
	return name, true
}

// ParseHealth decodes health data: "ok" must be a boolean; "event" and
// "error" strings or null (Python's None); other fields are ignored.
func ParseHealth(data []byte) (Health, error) {
	var raw struct {
		OK    *bool           `json:"ok"`
		Event json.RawMessage `json:"event"`
		Error json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return Health{}, errField("data.ok", RuleWrongType, "health data must be an object with a boolean ok: %v", err)
	}
	if raw.OK == nil {
		return Health{}, errField("data.ok", RuleMissing, "is missing: health data needs a boolean ok")
	}
	h := Health{OK: *raw.OK}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
		dst  *string
	}{{"data.event", raw.Event, &h.Event}, {"data.error", raw.Error, &h.Error}} {
		if len(f.raw) == 0 || string(f.raw) == "null" {
			continue
		}
		if err := json.Unmarshal(f.raw, f.dst); err != nil {
			return Health{}, errField(f.name, RuleWrongType, "must be a string or null")
		}
	}
	return h, nil
}

// KeepaliveTopicPrefix is where heartbeats go: system/keepalive/{client_id}.
const KeepaliveTopicPrefix = "system/keepalive/"

// KeepaliveTopic is the heartbeat topic of a client.
func KeepaliveTopic(clientID string) string { return KeepaliveTopicPrefix + clientID }

// Heartbeat is what a client publishes to KeepaliveTopic every few seconds,
// at QoS 0 and not retained. It is not an envelope, and its time field is
// "timestamp", as the Python client writes it.
type Heartbeat struct {
	OK        bool    `json:"ok"`
	Event     string  `json:"event"`
	Timestamp float64 `json:"timestamp"`
}

// NewHeartbeat returns the heartbeat for now.
func NewHeartbeat(now time.Time) Heartbeat {
	return Heartbeat{OK: true, Event: "heartbeat", Timestamp: Seconds(now)}
}
