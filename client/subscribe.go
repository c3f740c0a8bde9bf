package client

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/internal/topic"
)

// Message is what a handler receives.
type Message struct {
	Topic    string
	Payload  []byte
	Envelope *envelope.Envelope // nil if the payload is not an envelope (raw subscriptions only)
	QoS      byte
	Retained bool

	responseTopic string // set on requests (see Reply)
	correlation   []byte
}

// Handler handles one message. An error, or a panic, is logged with the
// topic and envelope id; delivery goes on.
type Handler func(ctx context.Context, m Message) error

// SubscribeOption changes one subscription.
type SubscribeOption func(*subscribeOptions)

type subscribeOptions struct {
	qos   byte
	raw   bool
	queue int
}

// SubQoS sets the subscription's maximum QoS (default 1).
func SubQoS(q byte) SubscribeOption { return func(o *subscribeOptions) { o.qos = q } }

// Raw delivers messages that are not valid envelopes too (Message.Envelope
// is nil for them); without it they are dropped and counted.
func Raw() SubscribeOption { return func(o *subscribeOptions) { o.raw = true } }

// Queue bounds this subscription's waiting messages (default
// Config.HandlerQueue).
func Queue(n int) SubscribeOption { return func(o *subscribeOptions) { o.queue = n } }

// Subscription is one filter and its handler, with a goroutine and a
// bounded queue of its own: when the handler falls behind and the queue is
// full, new messages for it are dropped (already acknowledged to the
// broker) and counted in Dropped; other subscriptions are not affected.
type Subscription struct {
	c       *Client
	filter  string // as subscribed
	match   string // what topics are matched against ($share/group/ removed)
	opts    subscribeOptions
	handler Handler
	ch      chan Message
	dropped atomic.Uint64
	once    sync.Once
}

// Subscribe subscribes to filter and runs h for each message, on the
// subscription's own goroutine. The subscription is restored after every
// reconnect. Made before Connect, or while disconnected, it takes effect
// when the connection comes up.
func (c *Client) Subscribe(ctx context.Context, filter string, h Handler, opts ...SubscribeOption) (*Subscription, error) {
	if !topic.ValidFilter(filter) {
		return nil, fmt.Errorf("client: %q is not a topic filter", filter)
	}
	if c.closed.Load() {
		return nil, ErrClosed
	}
	o := subscribeOptions{qos: 1, queue: c.cfg.HandlerQueue}
	for _, f := range opts {
		f(&o)
	}
	s := &Subscription{c: c, filter: filter, match: shareless(filter), opts: o, handler: h, ch: make(chan Message, o.queue)}
	c.subsMu.Lock()
	c.subs = append(c.subs, s)
	c.subsMu.Unlock()
	c.wg.Add(1)
	go s.run()
	if c.cm == nil || !c.out.isConnected() {
		return s, nil
	}
	if err := c.sendSubscribe(ctx, c.cm, []*Subscription{s}, false); err != nil {
		s.remove()
		return nil, err
	}
	return s, nil
}

// shareless strips a shared subscription's $share/{group}/.
func shareless(filter string) string {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		if _, f, ok := strings.Cut(rest, "/"); ok {
			return f
		}
	}
	return filter
}

// Handle subscribes with a handler that gets the envelope's data as a T.
// A message whose data does not fit T is logged and skipped.
func Handle[T any](c *Client, ctx context.Context, filter string, h func(ctx context.Context, m Message, data T) error, opts ...SubscribeOption) (*Subscription, error) {
	return c.Subscribe(ctx, filter, func(ctx context.Context, m Message) error {
		v, err := envelope.Decode[T](m.Envelope)
		if err != nil {
			return err
		}
		return h(ctx, m, v)
	}, opts...)
}

// Unsubscribe ends the subscription (at the broker too, unless another
// subscription of this client has the same filter).
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	if !s.remove() {
		return nil
	}
	c := s.c
	c.subsMu.RLock()
	shared := false
	for _, o := range c.subs {
		shared = shared || o.filter == s.filter
	}
	c.subsMu.RUnlock()
	if shared || c.cm == nil || !c.out.isConnected() {
		return nil
	}
	_, err := c.cm.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{s.filter}})
	return err
}

// remove takes s out of the client and stops its goroutine; false if it
// was already removed.
func (s *Subscription) remove() bool {
	removed := false
	s.once.Do(func() {
		c := s.c
		c.subsMu.Lock()
		for i, o := range c.subs {
			if o == s {
				c.subs = append(c.subs[:i:i], c.subs[i+1:]...)
				break
			}
		}
		close(s.ch)
		c.subsMu.Unlock()
		removed = true
	})
	return removed
}

// Dropped is how many messages this subscription lost to a full queue.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Filter is the subscription's topic filter.
func (s *Subscription) Filter() string { return s.filter }

func (s *Subscription) run() {
	defer s.c.wg.Done()
	for m := range s.ch {
		s.handle(m)
	}
}

func (s *Subscription) handle(m Message) {
	c := s.c
	id := ""
	if m.Envelope != nil {
		id = m.Envelope.ID
	}
	defer func() {
		if r := recover(); r != nil {
			c.stats.handlerPanics.Add(1)
			c.log.Error("handler panicked", "topic", m.Topic, "envelope_id", id, "panic", r)
		}
	}()
	if err := s.handler(c.ctx, m); err != nil {
		c.stats.handlerErrors.Add(1)
		c.log.Error("handler failed", "topic", m.Topic, "envelope_id", id, "error", err)
	}
}

func (c *Client) closeSubscriptions() {
	c.subsMu.RLock()
	subs := append([]*Subscription(nil), c.subs...)
	c.subsMu.RUnlock()
	for _, s := range subs {
		s.remove()
	}
}

// sendSubscribe subscribes the broker to subs' filters in one SUBSCRIBE.
// On a reconnect retained messages are not sent again for filters the
// broker still had (retain handling 1).
func (c *Client) sendSubscribe(ctx context.Context, cm *autopaho.ConnectionManager, subs []*Subscription, reconnect bool) error {
	seen := map[string]bool{}
	var opts []paho.SubscribeOptions
	for _, s := range subs {
		if seen[s.filter] {
			continue
		}
		seen[s.filter] = true
		o := paho.SubscribeOptions{Topic: s.filter, QoS: s.opts.qos}
		if reconnect {
			o.RetainHandling = 1
		}
		opts = append(opts, o)
	}
	if len(opts) == 0 {
		return nil
	}
	ack, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: opts})
	if err != nil {
		return fmt.Errorf("client: subscribe: %w", err)
	}
	var errs []error
	for i, code := range ack.Reasons {
		if code >= 0x80 && i < len(opts) {
			errs = append(errs, fmt.Errorf("client: broker refused the subscription to %s (reason %#x)", opts[i].Topic, code))
		}
	}
	return errors.Join(errs...)
}

// resubscribe restores every subscription on a new connection.
func (c *Client) resubscribe(ctx context.Context, cm *autopaho.ConnectionManager, reconnect bool) {
	c.subsMu.RLock()
	subs := append([]*Subscription(nil), c.subs...)
	c.subsMu.RUnlock()
	if err := c.sendSubscribe(ctx, cm, subs, reconnect); err != nil {
		c.log.Error("subscriptions not restored", "error", err)
	}
}

// receive is paho's callback, on its read goroutine: it only routes, so
// acks and other subscriptions never wait for a handler.
func (c *Client) receive(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	c.stats.received.Add(1)
	m := Message{Topic: p.Topic, Payload: p.Payload, QoS: p.QoS, Retained: p.Retain}
	if p.Properties != nil {
		m.responseTopic, m.correlation = p.Properties.ResponseTopic, p.Properties.CorrelationData
	}
	if e, err := envelope.Parse(p.Payload); err == nil {
		m.Envelope = e
		if c.dedupe.seen(e.Type, e.ID, time.Now()) {
			c.stats.duplicates.Add(1)
			return true, nil
		}
	}
	c.subsMu.RLock()
	defer c.subsMu.RUnlock()
	for _, s := range c.subs {
		if !topic.Match(s.match, p.Topic) {
			continue
		}
		if m.Envelope == nil && !s.opts.raw {
			c.stats.invalid.Add(1)
			continue
		}
		select {
		case s.ch <- m:
		default:
			s.dropped.Add(1)
			c.stats.dropped.Add(1)
		}
	}
	return true, nil
}

// dedupe remembers (type, id) pairs for a TTL, at most max of them.
type dedupe struct {
	ttl  time.Duration
	max  int
	mu   sync.Mutex
	seq  *list.List // of dedupeEntry, oldest first
	keys map[string]*list.Element
}

type dedupeEntry struct {
	key string
	at  time.Time
}

func newDedupe(ttl time.Duration, max int) *dedupe {
	if ttl <= 0 || max <= 0 {
		return nil
	}
	return &dedupe{ttl: ttl, max: max, seq: list.New(), keys: map[string]*list.Element{}}
}

// seen reports whether (typ, id) came within the TTL, and remembers it.
func (d *dedupe) seen(typ, id string, now time.Time) bool {
	if d == nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for e := d.seq.Front(); e != nil && (now.Sub(e.Value.(dedupeEntry).at) > d.ttl || d.seq.Len() >= d.max); e = d.seq.Front() {
		delete(d.keys, e.Value.(dedupeEntry).key)
		d.seq.Remove(e)
	}
	key := typ + "|" + id
	if _, ok := d.keys[key]; ok {
		return true
	}
	d.keys[key] = d.seq.PushBack(dedupeEntry{key: key, at: now})
	return false
}

// Stats counts what happened to messages.
type Stats struct {
	received, duplicates, invalid, dropped, handlerErrors, handlerPanics, queueFull atomic.Uint64
}

// StatsSnapshot is a copy of the counts.
type StatsSnapshot struct {
	Received      uint64 // messages from the broker
	Duplicates    uint64 // dropped by deduplication
	Invalid       uint64 // not envelopes, for subscriptions without Raw
	Dropped       uint64 // lost to full handler queues
	HandlerErrors uint64 // handlers that returned an error
	HandlerPanics uint64 // handlers that panicked
	QueueFull     uint64 // publishes refused with ErrQueueFull
}

// Stats returns the client's counts.
func (c *Client) Stats() StatsSnapshot {
	s := &c.stats
	return StatsSnapshot{s.received.Load(), s.duplicates.Load(), s.invalid.Load(), s.dropped.Load(),
		s.handlerErrors.Load(), s.handlerPanics.Load(), s.queueFull.Load()}
}
