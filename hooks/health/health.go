// Package health is the broker hook that records every service's health:
// each valid health.status envelope on system/health/{source} becomes the
// service's latest record and joins its history in the store, on disk
// before the publisher's PUBACK. Heartbeats on system/keepalive/{client}
// update a last-seen time, kept in memory and flushed every few seconds only
// when it changed. A service that drops its connection without a clean
// DISCONNECT is marked offline: the broker publishes, retained,
// {"ok": false, "event": "offline", "error": "connection lost"} on its
// health topic.
package health

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/internal/lograte"
	"github.com/tarsmq/tarsmq/store"
)

// Config tunes the recorder.
type Config struct {
	// FlushInterval is the longest a heartbeat's last-seen time waits in
	// memory before it is written.
	FlushInterval time.Duration
	// OfflineGrace is how long after an unclean disconnect the service is
	// marked offline, unless it has reconnected by then.
	OfflineGrace time.Duration
	// BootID tells the current boot (default: bootid.Read).
	BootID func() string
}

// Hook is the health recorder. Create it with New and add it with
// Server.AddHook(hook, Config{...}).
type Hook struct {
	mqtt.HookBase
	cfg     Config
	st      *store.Store
	srv     *mqtt.Server
	boot    string
	limiter *lograte.Limiter
	errs    atomic.Uint64
	closing atomic.Bool

	mu      sync.Mutex
	seen    map[string]time.Time // every heartbeat's last time
	dirty   map[string]time.Time // not yet written
	stopped bool                 // no new offline checks once set

	stop chan struct{}
	wg   sync.WaitGroup
}

// New returns a recorder writing to st; srv publishes the offline notices.
func New(st *store.Store, srv *mqtt.Server, log *slog.Logger) *Hook {
	h := &Hook{st: st, srv: srv, limiter: lograte.New(10 * time.Second),
		seen: map[string]time.Time{}, dirty: map[string]time.Time{}, stop: make(chan struct{})}
	h.Log = log
	return h
}

// ID names the hook.
func (h *Hook) ID() string { return "health-recorder" }

// healthEvents are the events the hook handles.
var healthEvents = []byte{
	mqtt.OnPublish,
	mqtt.OnPublished,
	mqtt.OnDisconnect,
	mqtt.OnWill,
}

// Provides lists the events the recorder handles.
func (h *Hook) Provides(b byte) bool { return bytes.IndexByte(healthEvents, b) >= 0 }

// SetOpts keeps the hook's own logger rather than mochi's.
func (h *Hook) SetOpts(_ *slog.Logger, opts *mqtt.HookOptions) { h.Opts = opts }

// Init takes the Config, loads the last-seen times and starts flushing.
func (h *Hook) Init(config any) error {
	cfg, ok := config.(Config)
	if !ok {
		return fmt.Errorf("health: %w: want health.Config, got %T", mqtt.ErrInvalidConfigType, config)
	}
	if cfg.FlushInterval <= 0 || cfg.OfflineGrace < 0 || cfg.BootID == nil {
		return errors.New("health: FlushInterval must be positive, OfflineGrace not negative, BootID set")
	}
	h.cfg, h.boot = cfg, cfg.BootID()
	seen, err := h.st.LastSeen()
	if err != nil {
		return fmt.Errorf("health: load last-seen times: %w", err)
	}
	h.seen = seen
	h.wg.Add(1)
	go h.flushLoop()
	return nil
}

// Shutdown tells the recorder the broker is stopping: the disconnects that
// follow are not services dying.
func (h *Hook) Shutdown() { h.closing.Store(true) }

// Stop flushes the last-seen times and stops.
func (h *Hook) Stop() error {
	h.closing.Store(true)
	h.mu.Lock()
	if !h.stopped {
		h.stopped = true
		close(h.stop)
	}
	h.mu.Unlock()
	h.wg.Wait()
	return h.flush()
}

// BootID is the boot the broker runs in.
func (h *Hook) BootID() string { return h.boot }

// WriteErrors is how many health writes failed.
func (h *Hook) WriteErrors() uint64 { return h.errs.Load() }

// OnPublish records a health update before the publisher is acknowledged.
// A message that is not a valid health envelope (possible when the contract
// is not enforced) is left alone.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	name, ok := envelope.HealthService(pk.TopicName)
	if !ok || len(pk.Payload) == 0 {
		return pk, nil
	}
	f, err := envelope.Check(pk.Payload, 0)
	if err != nil || !f.TypeIs(envelope.TypeHealth) || !f.SourceIs(name) {
		return pk, nil
	}
	data, err := envelope.ParseHealth(f.Data)
	if err != nil {
		return pk, nil
	}
	h.put(store.HealthRecord{
		Source: name, Health: data, TS: f.TS, Received: time.Now(), Boot: h.boot,
		Envelope: bytes.Clone(pk.Payload),
	})
	return pk, nil
}

// put stores a record; a failure is logged and counted, and the message is
// still delivered.
func (h *Hook) put(rec store.HealthRecord) {
	if err := h.st.PutHealth(rec); err != nil {
		h.errs.Add(1)
		if n, ok := h.limiter.Allow("put", time.Now()); ok {
			h.Log.Error("health update not stored (it is still delivered)", "source", rec.Source, "error", err, "suppressed", n)
		}
	}
}

// OnWill handles a health will as it is sent: a will is written at CONNECT,
// so its ts would be that of the connection; it gets the time of the crash
// and a fresh id, and is recorded like any update (mochi sends wills without
// OnPublish).
func (h *Hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	name, ok := envelope.HealthService(will.TopicName)
	if !ok {
		return will, nil
	}
	e, err := envelope.Parse(will.Payload)
	if err != nil || e.Type != envelope.TypeHealth || e.Source != name {
		return will, nil
	}
	data, err := envelope.ParseHealth(e.Data)
	if err != nil {
		return will, nil
	}
	now := time.Now()
	e.ID, e.TS = envelope.NewID(), envelope.Seconds(now)
	b, err := e.Marshal()
	if err != nil {
		return will, nil
	}
	will.Payload = b
	h.put(store.HealthRecord{Source: name, Health: data, TS: e.TS, Received: now, Boot: h.boot, Envelope: b})
	return will, nil
}

// OnPublished notes a heartbeat.
func (h *Hook) OnPublished(_ *mqtt.Client, pk packets.Packet) {
	id, ok := strings.CutPrefix(pk.TopicName, envelope.KeepaliveTopicPrefix)
	if !ok || id == "" || strings.Contains(id, "/") || pk.Ignore {
		return
	}
	now := time.Now()
	h.mu.Lock()
	h.seen[id], h.dirty[id] = now, now
	h.mu.Unlock()
}

// LastSeen returns every client's last heartbeat.
func (h *Hook) LastSeen() map[string]time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]time.Time, len(h.seen))
	for k, v := range h.seen {
		out[k] = v
	}
	return out
}

func (h *Hook) flushLoop() {
	defer h.wg.Done()
	t := time.NewTicker(h.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			if err := h.flush(); err != nil {
				h.errs.Add(1)
				if n, ok := h.limiter.Allow("flush", time.Now()); ok {
					h.Log.Warn("last-seen times not stored", "error", err, "suppressed", n)
				}
			}
		}
	}
}

// flush writes the last-seen times that changed, if any: an idle broker
// writes nothing.
func (h *Hook) flush() error {
	h.mu.Lock()
	dirty := h.dirty
	h.dirty = map[string]time.Time{}
	h.mu.Unlock()
	return h.st.SetLastSeen(dirty)
}

// OnDisconnect marks a service offline when its connection ended without a
// clean DISCONNECT, unless the broker is stopping or the client is back
// within the grace period. A session restored from the store at start
// (mochi reports it as disconnected, with no connection) is no loss.
func (h *Hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if err == nil || h.closing.Load() || cl.IsTakenOver() || cl.Net.Inline || cl.Net.Conn == nil {
		return
	}
	names := []string{cl.ID}
	if u := string(cl.Properties.Username); u != "" && u != cl.ID {
		names = append(names, u)
	}
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return
	}
	h.wg.Add(1)
	h.mu.Unlock()
	go func() {
		defer h.wg.Done()
		select {
		case <-time.After(h.cfg.OfflineGrace):
		case <-h.stop:
			return
		}
		if h.closing.Load() {
			return
		}
		if now, ok := h.srv.Clients.Get(cl.ID); ok && now != cl && !now.Closed() {
			return // reconnected
		}
		for _, name := range names {
			h.markOffline(name)
		}
	}()
}

// markOffline publishes the offline notice for a service with health on
// record that is not already marked offline.
func (h *Hook) markOffline(name string) {
	last, found, err := h.st.HealthOf(name)
	if err != nil || !found {
		return
	}
	if !last.Health.OK && last.Health.Event == EventOffline {
		return
	}
	e, err := envelope.New(envelope.TypeHealth, name, envelope.Health{OK: false, Event: EventOffline, Error: ErrorConnectionLost})
	if err == nil {
		var b []byte
		if b, err = e.Marshal(); err == nil {
			err = h.srv.Publish(envelope.HealthTopic(name), b, true, 1)
		}
	}
	if err != nil {
		h.Log.Error("cannot mark a service offline", "source", name, "error", err)
		return
	}
	h.Log.Warn("service lost its connection; marked offline", "source", name)
}

// The offline notice's event and error.
const (
	EventOffline        = "offline"
	ErrorConnectionLost = "connection lost"
)
