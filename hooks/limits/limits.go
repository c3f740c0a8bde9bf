// Package limits is the broker hook that keeps one client from starving the
// others: a publish rate per client, the length and depth of topics, and
// the total number and size of retained messages.
//
// A client publishing faster than its rate is slowed down if it speaks
// MQTT 3.1.1: the broker stops reading from it until its bucket refills,
// so TCP pushes back and nothing is lost. An MQTT 5 client is told instead:
// DISCONNECT 0x96 "message rate too high" with a reason string. A topic
// over the limits, or a retained message that would take the totals over
// theirs, is refused like any publish (MQTT 5 QoS 1/2: PUBACK 0x90 or
// 0x97 with a reason; otherwise acknowledged and dropped) and a subscription
// filter over the limits gets SUBACK 0x8F.
package limits

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/time/rate"

	"github.com/tarsmq/tarsmq/internal/lograte"
	"github.com/tarsmq/tarsmq/internal/reject"
)

// Config sets the limits; a zero value turns a limit off.
type Config struct {
	PublishRate         float64 // publishes per second per client
	PublishBurst        int     // publishes a client may send at once before the rate applies
	MaxTopicLength      int     // bytes
	MaxTopicLevels      int
	MaxRetainedMessages int
	MaxRetainedBytes    int64 // payload bytes of all retained messages
}

// What a limit did, as counted.
const (
	Throttled         = "throttled"         // a 3.1.1 client waited for its rate
	Disconnected      = "disconnected"      // an MQTT 5 client over its rate
	TopicLength       = "topic_length"      // a topic or filter too long
	TopicLevels       = "topic_levels"      // a topic or filter too deep
	RetainedMessages  = "retained_messages" // a retained message over the count
	RetainedBytes     = "retained_bytes"    // a retained message over the bytes
	maxTrackedClients = 1024
)

// Hook applies the limits. Create it with New and add it with
// Server.AddHook(hook, Config{...}).
type Hook struct {
	mqtt.HookBase
	srv     *mqtt.Server
	cfg     Config
	limiter *lograte.Limiter
	stop    chan struct{}
	stopped sync.Once

	rates sync.Map // *mqtt.Client -> *rate.Limiter

	mu        sync.Mutex
	retained  map[string]int // topic -> payload size
	retBytes  int64
	counts    map[string]uint64
	throttled map[string]uint64 // by client id, bounded
}

// New returns a Hook for srv, logging to log.
func New(srv *mqtt.Server, log *slog.Logger) *Hook {
	h := &Hook{srv: srv, limiter: lograte.New(10 * time.Second), stop: make(chan struct{}),
		retained: map[string]int{}, counts: map[string]uint64{}, throttled: map[string]uint64{}}
	h.Log = log
	return h
}

// ID names the hook.
func (h *Hook) ID() string { return "limits" }

// limitsEvents are the events the hook handles.
var limitsEvents = []byte{
	mqtt.OnPacketRead,
	mqtt.OnPublish,
	mqtt.OnSubscribe,
	mqtt.OnRetainMessage,
	mqtt.OnRetainedExpired,
	mqtt.OnDisconnect,
}

// Provides says whether the hook handles event b.
func (h *Hook) Provides(b byte) bool { return bytes.IndexByte(limitsEvents, b) >= 0 }

// SetOpts keeps the hook's own logger rather than mochi's.
func (h *Hook) SetOpts(_ *slog.Logger, opts *mqtt.HookOptions) { h.Opts = opts }

// Init takes the hook's Config.
func (h *Hook) Init(config any) error {
	cfg, ok := config.(Config)
	if !ok {
		return fmt.Errorf("limits: %w: want limits.Config, got %T", mqtt.ErrInvalidConfigType, config)
	}
	if cfg.PublishRate > 0 && cfg.PublishBurst < 1 {
		return fmt.Errorf("limits: a publish rate needs a burst of at least 1")
	}
	h.cfg = cfg
	return nil
}

// Stop ends every wait for a rate.
func (h *Hook) Stop() error {
	h.stopped.Do(func() { close(h.stop) })
	return nil
}

// CountRetained takes stock of the retained messages the broker holds,
// such as those restored from the store at start.
func (h *Hook) CountRetained(msgs map[string]packets.Packet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for topic, pk := range msgs {
		h.setRetained(topic, len(pk.Payload))
	}
}

// Retained returns the number and payload bytes of retained messages.
func (h *Hook) Retained() (messages int, bytes int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.retained), h.retBytes
}

// OnPacketRead holds a publisher to its rate.
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || h.cfg.PublishRate <= 0 || cl.Net.Inline {
		return pk, nil
	}
	v, ok := h.rates.Load(cl)
	if !ok {
		v, _ = h.rates.LoadOrStore(cl, rate.NewLimiter(rate.Limit(h.cfg.PublishRate), h.cfg.PublishBurst))
	}
	lim := v.(*rate.Limiter)
	if cl.Properties.ProtocolVersion == 5 {
		if lim.Allow() {
			return pk, nil
		}
		why := fmt.Sprintf("over the publish rate of %g/s with a burst of %d (limits.publish_rate)", h.cfg.PublishRate, h.cfg.PublishBurst)
		h.count(cl, Disconnected, why)
		return pk, h.srv.DisconnectClient(cl, packets.Code{Code: packets.ErrMessageRateTooHigh.Code, Reason: why})
	}
	r := lim.Reserve()
	d := r.Delay()
	if d <= 0 {
		return pk, nil
	}
	h.count(cl, Throttled, fmt.Sprintf("slowed down to the publish rate of %g/s (limits.publish_rate)", h.cfg.PublishRate))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-h.stop:
	}
	return pk, nil
}

// OnDisconnect forgets the client's rate.
func (h *Hook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { h.rates.Delete(cl) }

// OnPublish refuses topics over the limits and retained messages over the
// totals.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if what, why := h.topicOver(pk.TopicName); what != "" {
		h.count(cl, what, why)
		return pk, reject.Publish(cl, pk, packets.ErrTopicNameInvalid.Code, "topic "+why)
	}
	if !pk.FixedHeader.Retain || len(pk.Payload) == 0 {
		return pk, nil
	}
	h.mu.Lock()
	old, had := h.retained[pk.TopicName]
	n, b := len(h.retained), h.retBytes-int64(old)+int64(len(pk.Payload))
	h.mu.Unlock()
	if !had {
		n++
	}
	var what, why string
	switch {
	case h.cfg.MaxRetainedMessages > 0 && n > h.cfg.MaxRetainedMessages:
		what, why = RetainedMessages, fmt.Sprintf("the broker holds its maximum of %d retained messages (limits.max_retained_messages)", h.cfg.MaxRetainedMessages)
	case h.cfg.MaxRetainedBytes > 0 && b > h.cfg.MaxRetainedBytes:
		what, why = RetainedBytes, fmt.Sprintf("retained messages would take %d bytes, over limits.max_retained_bytes (%d)", b, h.cfg.MaxRetainedBytes)
	default:
		return pk, nil
	}
	h.count(cl, what, why)
	return pk, reject.Publish(cl, pk, packets.ErrQuotaExceeded.Code, why)
}

// OnSubscribe turns a filter over the topic limits into one mochi refuses
// as invalid (SUBACK 0x8F, or 0x80 for MQTT 3.1.1).
func (h *Hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	for i, f := range pk.Filters {
		if what, why := h.topicOver(f.Filter); what != "" {
			h.count(cl, what, "filter "+why)
			pk.Filters[i].Filter = "" // invalid
		}
	}
	return pk
}

// topicOver says which topic limit name breaks, if any, and how.
func (h *Hook) topicOver(name string) (what, why string) {
	if h.cfg.MaxTopicLength > 0 && len(name) > h.cfg.MaxTopicLength {
		return TopicLength, fmt.Sprintf("%q is %d bytes long, over limits.max_topic_length (%d)", trim(name), len(name), h.cfg.MaxTopicLength)
	}
	if h.cfg.MaxTopicLevels > 0 {
		if n := strings.Count(name, "/") + 1; n > h.cfg.MaxTopicLevels {
			return TopicLevels, fmt.Sprintf("%q has %d levels, over limits.max_topic_levels (%d)", trim(name), n, h.cfg.MaxTopicLevels)
		}
	}
	return "", ""
}

func trim(s string) string { return reject.Truncate(s, 64) }

// OnRetainMessage keeps the retained totals.
func (h *Hook) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, _ int64) {
	h.mu.Lock()
	h.setRetained(pk.TopicName, len(pk.Payload))
	h.mu.Unlock()
}

// OnRetainedExpired keeps the retained totals.
func (h *Hook) OnRetainedExpired(topic string) {
	h.mu.Lock()
	h.setRetained(topic, 0)
	h.mu.Unlock()
}

// setRetained records topic's retained payload size; 0 removes it. The
// broker's own "$" topics ($SYS) are not counted: clients cannot publish
// there, and a limit must not be used up before the first client comes.
func (h *Hook) setRetained(topic string, size int) {
	if strings.HasPrefix(topic, "$") {
		return
	}
	h.retBytes -= int64(h.retained[topic])
	if size == 0 {
		delete(h.retained, topic)
		return
	}
	h.retained[topic] = size
	h.retBytes += int64(size)
}

// count counts and logs (rate-limited) what a limit did to cl.
func (h *Hook) count(cl *mqtt.Client, what, why string) {
	h.mu.Lock()
	h.counts[what]++
	if what == Throttled {
		key := cl.ID
		if _, ok := h.throttled[key]; !ok && len(h.throttled) >= maxTrackedClients {
			key = "_other"
		}
		h.throttled[key]++
	}
	h.mu.Unlock()
	if suppressed, ok := h.limiter.Allow(what+"\x00"+cl.ID, time.Now()); ok {
		args := []any{"client", cl.ID, "limit", what, "reason", why}
		if suppressed > 0 {
			args = append(args, "suppressed", suppressed)
		}
		h.Log.Warn("limit reached", args...)
	}
}

// Counts returns how often each limit acted (Throttled, Disconnected,
// TopicLength, ...).
func (h *Hook) Counts() map[string]uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]uint64, len(h.counts))
	for k, v := range h.counts {
		out[k] = v
	}
	return out
}

// ThrottledOf is how many times clientID had to wait for its publish rate.
func (h *Hook) ThrottledOf(clientID string) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.throttled[clientID]
}
