package contract

import (
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/envelope"
)

// Rejection is one message the contract refused, as republished on
// system/contract/rejected/{client}.
type Rejection struct {
	Client string        `json:"client"`
	Topic  string        `json:"topic"`
	QoS    byte          `json:"qos"`
	Bytes  int           `json:"bytes"`
	Rule   envelope.Rule `json:"rule"`
	Field  string        `json:"field,omitempty"`
	Reason string        `json:"reason"`
}

// maxTrackedClients bounds the per-client counts; clients beyond it are
// counted under OtherClients.
const maxTrackedClients = 1024

// OtherClients is the client key under which rejections are counted once
// maxTrackedClients clients are tracked.
const OtherClients = "_other"

type stats struct {
	mu       sync.Mutex
	total    uint64
	byClient map[string]map[envelope.Rule]uint64
}

// record counts, logs and (when configured) republishes a rejection of a
// message or a will (what).
func (h *Hook) record(cl *mqtt.Client, pk packets.Packet, err *envelope.Error, what string, cfg Config) {
	h.stats.mu.Lock()
	h.stats.total++
	key := cl.ID
	if _, ok := h.stats.byClient[key]; !ok && len(h.stats.byClient) >= maxTrackedClients {
		key = OtherClients
	}
	m := h.stats.byClient[key]
	if m == nil {
		m = make(map[envelope.Rule]uint64)
		h.stats.byClient[key] = m
	}
	m[err.Rule]++
	h.stats.mu.Unlock()

	if suppressed, ok := h.limiter.Allow(cl.ID+"\x00"+string(err.Rule), time.Now()); ok {
		verdict := what + " rejected: envelope contract"
		if !cfg.Enforce {
			verdict = what + " breaks the envelope contract (delivered: contract.enforce is off)"
		}
		args := []any{"client", cl.ID, "topic", pk.TopicName, "rule", err.Rule, "reason", err.Error()}
		if suppressed > 0 {
			args = append(args, "suppressed", suppressed)
		}
		h.Log.Warn(verdict, args...)
	}

	if cfg.Republish && h.notify != nil {
		r := Rejection{Client: cl.ID, Topic: pk.TopicName, QoS: pk.FixedHeader.Qos, Bytes: len(pk.Payload),
			Rule: err.Rule, Field: err.Field, Reason: err.Error()}
		select {
		case h.notify <- r:
		default: // the republisher is behind: never hold up a publisher for it
		}
	}
}

// republish publishes rejections, off the publishers' goroutines.
func (h *Hook) republish() {
	defer h.wg.Done()
	for {
		select {
		case <-h.done:
			return
		case r := <-h.notify:
			e, err := envelope.New(TypeRejected, "tarsmq", r)
			if err == nil {
				b, _ := e.Marshal()
				err = h.pub.Publish(RejectedTopicPrefix+topicLevel(r.Client), b, false, 0)
			}
			if err != nil {
				if _, ok := h.limiter.Allow("\x00republish", time.Now()); ok {
					h.Log.Warn("cannot republish a contract rejection", "error", err)
				}
			}
		}
	}
}

// topicLevel makes a client id safe as one topic level.
func topicLevel(s string) string {
	if s == "" {
		return "_"
	}
	return strings.NewReplacer("/", "_", "+", "_", "#", "_").Replace(s)
}

// Rejections returns a copy of the rejection counts by client and rule.
func (h *Hook) Rejections() map[string]map[envelope.Rule]uint64 {
	h.stats.mu.Lock()
	defer h.stats.mu.Unlock()
	out := make(map[string]map[envelope.Rule]uint64, len(h.stats.byClient))
	for c, m := range h.stats.byClient {
		cp := make(map[envelope.Rule]uint64, len(m))
		for r, n := range m {
			cp[r] = n
		}
		out[c] = cp
	}
	return out
}

// RejectedTotal is how many messages broke the contract.
func (h *Hook) RejectedTotal() uint64 {
	h.stats.mu.Lock()
	defer h.stats.mu.Unlock()
	return h.stats.total
}
