package flow

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// gate makes publishers wait for full subscribers under the Block policy.
// It keeps, per topic, the online Conns a message on that topic goes to, so
// a publish costs one map lookup rather than a second walk of mochi's topic
// tree; any subscribe, unsubscribe, connect or disconnect starts it afresh.
type gate struct {
	gen     atomic.Uint64
	mu      sync.RWMutex
	targets map[string]gateEntry
}

type gateEntry struct {
	gen   uint64
	conns []*Conn
}

// maxGateTopics bounds the cache; past it, it starts empty again.
const maxGateTopics = 4096

func (g *gate) invalidate() { g.gen.Add(1) }

// lookup returns the online Conns subscribed to topic, shared subscription
// members included.
func (ctl *Controller) gateTargets(topic string) []*Conn {
	g := &ctl.gate
	gen := g.gen.Load()
	g.mu.RLock()
	e, ok := g.targets[topic]
	g.mu.RUnlock()
	if ok && e.gen == gen {
		return e.conns
	}
	subs := ctl.server.Topics.Subscribers(topic)
	var conns []*Conn
	ctl.mu.RLock()
	add := func(id string) {
		if c := ctl.online[id]; c != nil {
			conns = append(conns, c)
		}
	}
	for id := range subs.Subscriptions {
		add(id)
	}
	for _, group := range subs.Shared {
		for id := range group {
			add(id)
		}
	}
	ctl.mu.RUnlock()
	g.mu.Lock()
	if len(g.targets) >= maxGateTopics {
		clear(g.targets)
	}
	g.targets[topic] = gateEntry{gen: gen, conns: conns}
	g.mu.Unlock()
	return conns
}

// OnPublish is the gate of the policies that block: before the message is
// acknowledged and fanned out, wait until each online subscriber it goes to
// has room, for at most BlockTimeout in all. Under ByQoS a QoS 0 message
// waits only for a subscriber whose backlog is the broker's doing (short of
// CPU, its socket takes what it is given): the publisher then yields to
// the subscriber instead of producing messages to drop. A subscriber whose
// socket is full is slow: its QoS 0 messages are dropped, no one waits.
func (ctl *Controller) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	qos := pk.FixedHeader.Qos
	if ctl.cfg.Policy == Drop {
		ctl.waitForChannels(cl, pk.TopicName)
		return pk, nil
	}
	var ctx context.Context
	for _, c := range ctl.gateTargets(pk.TopicName) {
		if c.clientID == cl.ID || !c.full() {
			continue // a client's own acks are read by the loop we would block
		}
		cpuOnly := !ctl.cfg.Policy.blocks(qos)
		if cpuOnly && (c.isLossy() || c.networkBound()) {
			continue
		}
		if ctx == nil {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctl.ctx, ctl.cfg.BlockTimeout)
			defer cancel()
		}
		c.waitForRoom(ctx.Done(), cpuOnly)
	}
	return pk, nil
}

// waitForChannels is the Drop policy's only wait: for a subscriber whose
// outbound channel in mochi is at its limit. Conn.Write never blocks, so a
// full channel means mochi's writer is short of CPU, not a slow
// subscriber; were the channel to fill, mochi would drop the message
// itself, uncounted in its inflight figure.
func (ctl *Controller) waitForChannels(cl *mqtt.Client, topic string) {
	limit := ctl.cfg.OutboundLimit
	if limit <= 0 {
		return
	}
	var deadline time.Time
	for _, c := range ctl.gateTargets(topic) {
		for c.clientID != cl.ID && c.chanLen() >= limit && !c.isClosed() {
			if deadline.IsZero() {
				deadline = time.Now().Add(ctl.cfg.BlockTimeout)
			} else if time.Now().After(deadline) || ctl.ctx.Err() != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// OnSubscribed starts the gate's topic map afresh.
func (ctl *Controller) OnSubscribed(*mqtt.Client, packets.Packet, []byte) { ctl.gate.invalidate() }

// OnUnsubscribed starts the gate's topic map afresh.
func (ctl *Controller) OnUnsubscribed(*mqtt.Client, packets.Packet) { ctl.gate.invalidate() }
