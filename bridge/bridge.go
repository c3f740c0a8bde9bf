// Package bridge connects the broker to an upstream MQTT broker or cluster
// (EMQX, HiveMQ, VerneMQ, Mosquitto, another tarsmq): out rules forward
// local messages upstream, in rules bring upstream messages down.
//
// Out messages at QoS 1 go through a store-and-forward queue in the
// broker's Badger store, written before the local publisher is
// acknowledged and removed once the upstream acknowledges, so a link down
// for hours or a broker restart loses nothing acknowledged within the
// queue's bound. The queue is sent in order. Retained local state is queued
// again after every reconnect, so the fleet's view is current.
//
// Loops: a message a bridge brought down is never sent back up it, and
// over MQTT 5 every forwarded message carries the ids of the brokers it
// passed (user property tarsmq-path), so that two tarsmq bridged to each
// other never pass a message back and forth.
package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/internal/lograte"
	"github.com/tarsmq/tarsmq/store"
)

// Deps are what a bridge needs from the broker.
type Deps struct {
	Server   *mqtt.Server
	Store    *store.Store
	Log      *slog.Logger
	BrokerID string // this broker's, for loop detection
	DeviceID string // for {device_id}
	// Check vets a message coming down before it is published locally (the
	// envelope contract); nil accepts everything.
	Check func(topic string, payload []byte) error
}

// Bridge is one upstream connection with its rules and queue.
type Bridge struct {
	cfg      Config
	d        Deps
	dial     *dialer
	password []byte
	q        *queue
	qos0     chan record // out QoS 0 messages waiting for the link
	limiter  *lograte.Limiter

	mu    sync.Mutex
	state State
	peer  string // the upstream tarsmq's broker id

	out, in, dropped0, rejectedIn, refusedUp atomic.Uint64
	poison                                   poison // used by the run goroutine only

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// State is what a bridge reports about itself.
type State struct {
	Name          string     `json:"name"`
	URL           string     `json:"url"`
	Connected     bool       `json:"connected"`
	LastConnected *time.Time `json:"last_connected,omitempty"`
	Connects      uint64     `json:"connects"` // links the upstream accepted since the broker started: a flapping link shows here
	LastError     string     `json:"last_error,omitempty"`
	Queued        int        `json:"queued"`       // QoS 1 out messages waiting
	QueuedBytes   int64      `json:"queued_bytes"` // and what they take in the store
	Dropped       uint64     `json:"dropped"`      // oldest queued dropped over the bound
	Refused       uint64     `json:"refused"`      // new messages not queued over the bound
	DroppedQoS0   uint64     `json:"dropped_qos0"` // QoS 0 out messages while the link was down
	ForwardedOut  uint64     `json:"forwarded_out"`
	ForwardedIn   uint64     `json:"forwarded_in"`
	RejectedIn    uint64     `json:"rejected_in"` // messages down that broke the envelope contract
	RefusedUp     uint64     `json:"refused_up"`  // messages up that the upstream refused (PUBACK 0x80 or more)
	Damaged       uint64     `json:"damaged"`     // queued messages found unreadable in the store, removed
}

// New prepares a bridge (cfg with its defaults applied); Start connects it.
func New(cfg Config, d Deps) (*Bridge, error) {
	dial, err := newDialer(cfg)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", cfg.Name, err)
	}
	b := &Bridge{cfg: cfg, d: d, dial: dial, qos0: make(chan record, 1024), limiter: lograte.New(30 * time.Second)}
	b.password = []byte(cfg.Password)
	if cfg.PasswordFile != "" {
		pw, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("bridge %s: password_file: %w", cfg.Name, err)
		}
		b.password = []byte(strings.TrimRight(string(pw), "\r\n"))
	}
	b.state = State{Name: cfg.Name, URL: redact(cfg.URL)}
	return b, nil
}

// Start opens the queue and connects in the background.
func (b *Bridge) Start() error {
	q, err := openQueue(b.d.Store, b.cfg.Name, b.cfg.Queue)
	if err != nil {
		return err
	}
	b.q = q
	if n, size, _, _, _ := q.stats(); n > 0 {
		b.d.Log.Info("bridge queue holds messages from before; they go first", "bridge", b.cfg.Name, "queued", n, "queued_bytes", size)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	b.wg.Add(1)
	go b.run(ctx)
	return nil
}

// Close disconnects; the queue stays in the store for the next start.
func (b *Bridge) Close() {
	if b.cancel != nil {
		b.cancel()
	}
	b.wg.Wait()
}

// State reports the bridge's state now.
func (b *Bridge) State() State {
	b.mu.Lock()
	s := b.state
	b.mu.Unlock()
	if b.q != nil {
		s.Queued, s.QueuedBytes, s.Dropped, s.Refused, s.Damaged = b.q.stats()
	}
	s.DroppedQoS0, s.ForwardedOut, s.ForwardedIn, s.RejectedIn = b.dropped0.Load(), b.out.Load(), b.in.Load(), b.rejectedIn.Load()
	s.RefusedUp = b.refusedUp.Load()
	return s
}

// run connects, forwards while the link is up, and reconnects with
// backoff and jitter until ctx ends.
func (b *Bridge) run(ctx context.Context) {
	defer b.wg.Done()
	// A fleet that lost its upstream at once must not come back at once.
	if !sleep(ctx, time.Duration(rand.Int64N(int64(b.cfg.FirstConnectJitter)+1))) {
		return
	}
	for attempt := 0; ctx.Err() == nil; {
		l, err := b.connect(ctx)
		if err == nil {
			attempt = 0
			err = b.serve(ctx, l)
		}
		if ctx.Err() != nil {
			return
		}
		b.setDown(err)
		attempt++
		if !sleep(ctx, backoff(attempt, b.cfg.ReconnectMin, b.cfg.ReconnectMax)) {
			return
		}
	}
}

// backoff is the wait before attempt n: from min doubling to max, each a
// random point between half and all of it.
func backoff(n int, lo, hi time.Duration) time.Duration {
	d := lo << min(n-1, 30)
	if d <= 0 || d > hi {
		d = hi
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (b *Bridge) connect(ctx context.Context) (link, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if b.cfg.Protocol == "3.1.1" {
		return connect3(cctx, b.dial, b.cfg, b.password, b.receive)
	}
	conn, err := b.dial.dial(cctx)
	if err != nil {
		return nil, err
	}
	l, err := connect5(cctx, conn, b.cfg, b.password, b.receive)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return l, nil
}

// serve runs one link: subscribe, queue the retained state, then forward
// until the link or ctx ends.
func (b *Bridge) serve(ctx context.Context, l link) error {
	defer l.close()
	defer b.q.release()
	b.mu.Lock()
	b.state.Connects++ // the upstream accepted the link
	b.mu.Unlock()
	if err := l.subscribe(ctx, b.cfg.In); err != nil {
		return err
	}
	now := time.Now()
	b.mu.Lock()
	b.peer = l.peerID()
	b.state.Connected, b.state.LastConnected, b.state.LastError = true, &now, ""
	b.mu.Unlock()
	b.d.Log.Info("bridge connected", "bridge", b.cfg.Name, "url", b.state.URL, "upstream_tarsmq", b.peer != "")
	b.queueRetained()
	return b.forward(ctx, l)
}

func (b *Bridge) setDown(err error) {
	b.mu.Lock()
	was := b.state.Connected
	b.state.Connected = false
	if err != nil {
		b.state.LastError = err.Error()
	}
	b.mu.Unlock()
	if was {
		b.d.Log.Warn("bridge disconnected; reconnecting", "bridge", b.cfg.Name, "error", err)
	} else if suppressed, ok := b.limiter.Allow("connect", time.Now()); ok {
		b.d.Log.Warn("bridge cannot connect; retrying", "bridge", b.cfg.Name, "url", b.state.URL, "error", err, "suppressed", suppressed)
	}
}

// ack is the upstream's answer to one forwarded message.
type ack struct {
	r   record
	err error
}

// forward sends the queue in order, at most Inflight messages awaiting
// their PUBACK, and the QoS 0 messages as they come.
func (b *Bridge) forward(ctx context.Context, l link) (err error) {
	acks := make(chan ack, b.cfg.Inflight+1)
	inflight, answered := 0, 0
	var cursor uint64
	var acked []record
	var first *record // the first queued message sent on this link
	flush := time.NewTicker(20 * time.Millisecond)
	defer flush.Stop()
	defer func() { _ = b.q.done(acked) }()
	defer func() {
		if ctx.Err() == nil && answered == 0 && first != nil {
			b.suspect(*first)
		} else if answered > 0 {
			b.poison = poison{}
		}
	}()
	for {
		if free := b.cfg.Inflight - inflight; free > 0 {
			rs, damaged, err := b.q.take(cursor, free)
			if err != nil {
				return err
			}
			if damaged > 0 {
				b.d.Log.Error("bridge: unreadable messages in the queue (a damaged store); removed", "bridge", b.cfg.Name, "count", damaged)
			}
			for _, r := range rs {
				inflight++
				cursor = r.seq
				if max := l.maxPacket(); max > 0 && r.packetSize() > int(max) {
					// Sent, it would cost the link: the upstream disconnects
					// a client over its maximum, and the queue would stall.
					acks <- ack{r, &refusedError{code: 0x95, reason: fmt.Sprintf("%d bytes, over the upstream's maximum packet size of %d", r.packetSize(), max)}}
					continue
				}
				if first == nil {
					first = &r
				}
				if err := l.publish(r, func(err error) { acks <- ack{r, err} }); err != nil {
					return err
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-l.lost():
			return fmt.Errorf("link lost: %w", l.cause())
		case a := <-acks:
			inflight--
			var refused *refusedError
			switch {
			case errors.As(a.err, &refused):
				answered++
				// Permanent for this message: it leaves the queue, so
				// that it does not hold up the others.
				b.refusedUp.Add(1)
				if suppressed, ok := b.limiter.Allow("refused", time.Now()); ok {
					b.d.Log.Warn("bridge: the upstream refused a message; dropped from the queue", "bridge", b.cfg.Name,
						"topic", a.r.topic, "error", a.err, "suppressed", suppressed)
				}
			case a.err != nil: // the link went down before the answer
				return a.err
			default:
				answered++
				b.out.Add(1)
			}
			if acked = append(acked, a.r); len(acked) >= 256 {
				if err := b.q.done(acked); err != nil {
					return err
				}
				acked = acked[:0]
			}
		case r := <-b.qos0:
			if err := l.publish(r, func(error) {}); err != nil {
				return err
			}
			b.out.Add(1)
		case <-b.q.notify:
		case <-flush.C:
			if err := b.q.done(acked); err != nil {
				return err
			}
			acked = acked[:0]
		}
	}
}

// poisonLinks is how many links in a row may end without a single answer
// from the upstream, each right after the same message was the first sent,
// before that message is taken out of the queue: an upstream that drops
// the link for one message (too large for it, without saying so) would
// otherwise stall the queue behind it for ever.
const poisonLinks = 5

// poison tracks the message links ended on.
type poison struct {
	seq   uint64
	links int
}

// suspect notes that a link ended with no answer after r was the first
// message sent on it, and takes r out of the queue, counted as refused
// upstream, once that has happened poisonLinks times in a row.
func (b *Bridge) suspect(r record) {
	if b.poison.seq != r.seq {
		b.poison = poison{seq: r.seq}
	}
	if b.poison.links++; b.poison.links < poisonLinks {
		return
	}
	b.poison = poison{}
	if err := b.q.done([]record{r}); err != nil {
		return
	}
	b.refusedUp.Add(1)
	b.d.Log.Error("bridge: the upstream dropped the link every time this message was sent; taken out of the queue", "bridge", b.cfg.Name,
		"topic", r.topic, "bytes", len(r.payload), "links", poisonLinks)
}

// queueRetained forwards the local retained messages the out rules match,
// after whatever is queued, so the upstream sees the current state.
func (b *Bridge) queueRetained() {
	for _, r := range b.cfg.Out {
		for _, pk := range b.d.Server.Topics.Messages(r.localFilter()) {
			b.offer(pk)
		}
	}
}

// offer forwards a local message if an out rule matches it (the first
// that does) and it did not come from where it would go.
func (b *Bridge) offer(pk packets.Packet) {
	if userProp(pk, propBridge) == b.cfg.Name {
		return // it came down this bridge
	}
	path := userProp(pk, propPath)
	b.mu.Lock()
	peer := b.peer
	b.mu.Unlock()
	if onPath(path, b.d.BrokerID) || (peer != "" && onPath(path, peer)) {
		return // it has been here, or there, before: a loop
	}
	for _, rule := range b.cfg.Out {
		remote, ok := rule.remote(pk.TopicName)
		if !ok {
			continue
		}
		r := record{topic: remote, payload: pk.Payload, qos: rule.QoS, retain: pk.FixedHeader.Retain, path: addPath(path, b.d.BrokerID)}
		if rule.QoS == 0 {
			select {
			case b.qos0 <- r:
			default:
				b.dropped0.Add(1)
			}
			return
		}
		if queued, err := b.q.push(r); err != nil {
			b.d.Log.Error("bridge: cannot queue a message", "bridge", b.cfg.Name, "topic", pk.TopicName, "error", err)
		} else if !queued {
			if suppressed, ok := b.limiter.Allow("full", time.Now()); ok {
				b.d.Log.Warn("bridge queue full: new messages are not queued (queue.overflow: refuse_new)", "bridge", b.cfg.Name, "suppressed", suppressed)
			}
		}
		return
	}
}

// receive publishes a message from the upstream locally, if an in rule
// maps it and it passes the contract.
func (b *Bridge) receive(m message) {
	if onPath(m.path, b.d.BrokerID) {
		return // our own message, come back another way
	}
	for _, rule := range b.cfg.In {
		local, ok := rule.local(m.topic)
		if !ok {
			continue
		}
		if b.d.Check != nil {
			if err := b.d.Check(local, m.payload); err != nil {
				b.rejectedIn.Add(1)
				if suppressed, ok := b.limiter.Allow("in\x00"+local, time.Now()); ok {
					b.d.Log.Warn("bridge: message from upstream breaks the envelope contract; not published", "bridge", b.cfg.Name,
						"topic", m.topic, "error", err, "suppressed", suppressed)
				}
				return
			}
		}
		b.mu.Lock()
		path := addPath(m.path, b.peer)
		b.mu.Unlock()
		pk := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: min(rule.QoS, m.qos), Retain: m.retain},
			TopicName:   local,
			Payload:     m.payload,
			PacketID:    1, // mochi wants one on a QoS 1 packet, and ignores it for its own
			Properties:  packets.Properties{User: []packets.UserProperty{{Key: propBridge, Val: b.cfg.Name}}},
		}
		if path != "" {
			pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: propPath, Val: path})
		}
		if cl, ok := b.d.Server.Clients.Get(mqtt.InlineClientId); ok {
			if err := b.d.Server.InjectPacket(cl, pk); err != nil {
				b.d.Log.Warn("bridge: cannot publish a message from upstream", "bridge", b.cfg.Name, "topic", local, "error", err)
				return
			}
		}
		b.in.Add(1)
		return
	}
}

func userProp(pk packets.Packet, key string) string {
	for _, p := range pk.Properties.User {
		if p.Key == key {
			return p.Val
		}
	}
	return ""
}

func onPath(path, id string) bool {
	if id == "" || path == "" {
		return false
	}
	for _, p := range strings.Split(path, ",") {
		if p == id {
			return true
		}
	}
	return false
}

func addPath(path, id string) string {
	switch {
	case id == "":
		return path
	case path == "":
		return id
	}
	return path + "," + id
}

// redact hides a password in a URL.
func redact(raw string) string {
	if i := strings.Index(raw, "@"); i > 0 {
		if j := strings.Index(raw, "://"); j > 0 && j < i {
			return raw[:j+3] + "…@" + raw[i+1:]
		}
	}
	return raw
}
