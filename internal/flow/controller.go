// Package flow is the broker's outbound flow control. mochi's own has three
// faults under load: a recursive read lock in Inflight.NextImmediate that
// deadlocks against a concurrent fan-out, a send quota that leaks once a
// client's Receive Maximum is reached so withheld messages are never sent,
// and silent drops when a client's outbound channel is full, after the
// publisher was acknowledged.
//
// flow replaces that path without forking mochi. Its hook sets mochi's send
// quota to zero, so mochi neither withholds messages nor calls NextImmediate,
// and every client connection is wrapped in a Conn that honours the client's
// Receive Maximum itself, never blocks the broker on the network, and holds
// what cannot be sent yet in a bounded queue. When that queue is full the
// configured policy applies: Block makes publishers wait (backpressure) and
// Drop discards the subscriber's own messages; either way every drop is
// counted per client.
package flow

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Policy is what happens when a subscriber's queue is full.
type Policy string

// The slow subscriber policies.
const (
	// Block makes a publisher wait, before its message is acknowledged, until
	// every subscriber it goes to has room, for at most BlockTimeout per
	// message. A subscriber that makes no room in that time is marked stalled:
	// publishers stop waiting for it and its excess messages are dropped and
	// counted until it catches up.
	Block Policy = "block"
	// Drop discards a message for a subscriber whose queue is full, and
	// counts it; publishers and other subscribers are not slowed.
	Drop Policy = "drop"
	// ByQoS blocks for QoS 1 and 2 messages: a subscriber slower than its
	// publishers slows them down rather than lose what they were promised
	// (its acks keep making room), and one that stops reading holds them up
	// for BlockTimeout once, then loses its own excess messages, counted,
	// until it catches up. QoS 0 messages are dropped for a subscriber
	// that does not take what it is sent (its socket is full), and wait
	// only when the backlog is the broker's own, short of CPU.
	ByQoS Policy = "qos"
)

// blocks reports whether a publish at qos waits for room under p.
func (p Policy) blocks(qos byte) bool {
	return p == Block || (p == ByQoS && qos > 0)
}

// Config sets the limits of one client's outbound queue.
type Config struct {
	MaxInflight   int           // QoS 1/2 publishes unacknowledged per client; a v5 Receive Maximum lowers it
	QueueMessages int           // publishes waiting per client before the policy applies
	QueueBytes    int64         // bytes waiting per client before the policy applies
	TotalBytes    int64         // bytes waiting for all clients before the policy applies to each with a backlog; 0: no limit
	OutboundLimit int           // packets in mochi's outbound channel of a client at which it is full; 0: none
	Policy        Policy        // Block, Drop or ByQoS
	BlockTimeout  time.Duration // longest a publisher waits for one message (Block, ByQoS)
	WriteTimeout  time.Duration // a client that takes no bytes for this long is disconnected
}

func (c Config) validate() error {
	switch {
	case c.MaxInflight < 1 || c.MaxInflight > 65535:
		return fmt.Errorf("flow: MaxInflight %d out of range 1..65535", c.MaxInflight)
	case c.QueueMessages < 1 || c.QueueBytes < 1:
		return fmt.Errorf("flow: queue limits must be positive")
	case c.Policy != Block && c.Policy != Drop && c.Policy != ByQoS:
		return fmt.Errorf("flow: unknown policy %q", c.Policy)
	case c.Policy != Drop && c.BlockTimeout <= 0:
		return fmt.Errorf("flow: BlockTimeout must be positive")
	case c.WriteTimeout <= 0:
		return fmt.Errorf("flow: WriteTimeout must be positive")
	}
	return nil
}

// Controller is the mochi hook that does flow control, and the factory of the
// Conns it controls. Add it with Server.AddHook(ctl, Config{...}) before the
// server starts, and wrap every accepted connection with Wrap.
type Controller struct {
	mqtt.HookBase
	cfg    Config
	server *mqtt.Server

	ctx    context.Context
	cancel context.CancelFunc
	conns  sync.WaitGroup // writers still running

	mu     sync.RWMutex
	online map[string]*Conn // by client id

	gate gate // where Block makes publishers wait

	dropped     atomic.Uint64
	queuedBytes atomic.Int64 // bytes waiting to be written, for all clients

	dropsMu sync.Mutex
	drops   map[string]uint64 // by client id, across reconnects

	// OnDropInflight, if set, hears of each QoS 1/2 message dropped for a
	// client after mochi recorded it in flight (mochi calls no hook then):
	// the persistence hook forgets it too.
	OnDropInflight func(cl *mqtt.Client, packetID uint16)
	// OnAdoptInflight, if set, hears of each message a client that took a
	// session over adopted from its predecessor under a new packet id
	// (see adopt): the persistence hook moves it.
	OnAdoptInflight func(cl *mqtt.Client, oldID uint16, pk packets.Packet)

	seq       sequence
	orphansMu sync.Mutex
	orphans   map[string][]orphan // by client id: see keepOrphan
}

// New returns a Controller for server that logs to log.
func New(server *mqtt.Server, log *slog.Logger) *Controller {
	ctx, cancel := context.WithCancel(context.Background())
	ctl := &Controller{
		server:  server,
		ctx:     ctx,
		cancel:  cancel,
		online:  make(map[string]*Conn),
		drops:   make(map[string]uint64),
		orphans: make(map[string][]orphan),
	}
	ctl.gate.targets = make(map[string]gateEntry)
	ctl.Log = log
	return ctl
}

// ID names the hook.
func (ctl *Controller) ID() string { return "flow-control" }

// flowEvents are the events the hook handles.
var flowEvents = []byte{
	mqtt.OnConnect,
	mqtt.OnSessionEstablished,
	mqtt.OnDisconnect,
	mqtt.OnPacketRead,
	mqtt.OnPublish,
	mqtt.OnQosPublish,
	mqtt.OnPublishDropped,
	mqtt.OnQosDropped,
	mqtt.OnQosComplete,
	mqtt.OnClientExpired,
	mqtt.OnSubscribed,
	mqtt.OnUnsubscribed,
}

// Provides lists the hook events the controller handles.
func (ctl *Controller) Provides(b byte) bool { return bytes.IndexByte(flowEvents, b) >= 0 }

// Init takes the controller's Config.
func (ctl *Controller) Init(config any) error {
	cfg, ok := config.(Config)
	if !ok {
		return fmt.Errorf("flow: %w: want flow.Config, got %T", mqtt.ErrInvalidConfigType, config)
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	ctl.cfg = cfg
	return nil
}

// SetOpts keeps the controller's own logger rather than mochi's.
func (ctl *Controller) SetOpts(_ *slog.Logger, opts *mqtt.HookOptions) { ctl.Opts = opts }

// Wrap puts a newly accepted connection under flow control.
func (ctl *Controller) Wrap(c net.Conn) *Conn {
	ctl.conns.Add(1)
	return newConn(ctl, c)
}

// Stop releases publishers waiting at the gate and waits, for a bounded
// time, until every connection's writer has finished.
func (ctl *Controller) Stop() error {
	ctl.cancel()
	done := make(chan struct{})
	go func() { ctl.conns.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(2 * linger):
		return fmt.Errorf("flow: connection writers still running after %v", 2*linger)
	}
}

// noQuota turns off mochi's own send quota for cl: with a maximum of zero,
// mochi neither withholds messages nor calls Inflight.NextImmediate.
func noQuota(cl *mqtt.Client) { cl.State.Inflight.ResetSendQuota(0) }

// OnConnect takes the client's Receive Maximum for its Conn.
func (ctl *Controller) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	noQuota(cl)
	if c, ok := cl.Net.Conn.(*Conn); ok {
		quota := ctl.cfg.MaxInflight
		if cl.Properties.ProtocolVersion >= 5 {
			rm := int(cl.Properties.Props.ReceiveMaximum)
			if rm == 0 {
				rm = 65535 // absent: the MQTT 5 default
			}
			quota = min(quota, rm)
		}
		c.bind(cl, quota, outboundLen(cl))
	}
	return nil
}

// OnSessionEstablished registers the client as online, and turns mochi's
// send quota off again: taking over a session resets it.
func (ctl *Controller) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	noQuota(cl)
	if c, ok := cl.Net.Conn.(*Conn); ok {
		ctl.mu.Lock()
		ctl.online[cl.ID] = c
		ctl.mu.Unlock()
		ctl.gate.invalidate()
		ctl.adopt(cl, c)
		c.established()
	}
}

// OnQosPublish keeps mochi's send quota off: it runs between mochi reading
// the quota and deciding to withhold a message, which closes the window in
// which a session takeover could have turned it back on.
// It also numbers each message in flight to a persistent session in
// publish order, for the resends of a resumed session.
func (ctl *Controller) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	noQuota(cl)
	if !tracked(cl) || pk.FixedHeader.Dup {
		return
	}
	seq := ctl.seq.stamp(cl.ID, pk.PacketID, 0)
	if adopting(cl) {
		ctl.keepOrphan(cl, orphan{pk, seq})
	}
}

// OnQosComplete forgets the number of a message no longer in flight.
func (ctl *Controller) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	ctl.seq.done(cl.ID, pk.PacketID)
}

// OnClientExpired forgets an expired session's message numbers.
func (ctl *Controller) OnClientExpired(cl *mqtt.Client) { ctl.seq.forget(cl.ID) }

// OnDisconnect forgets the client's connection.
func (ctl *Controller) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire && !cl.IsTakenOver() {
		ctl.seq.forget(cl.ID)
	}
	c, ok := cl.Net.Conn.(*Conn)
	if !ok {
		return
	}
	ctl.mu.Lock()
	if ctl.online[cl.ID] == c {
		delete(ctl.online, cl.ID)
	}
	ctl.mu.Unlock()
	ctl.gate.invalidate()
}

// OnPacketRead returns send quota when the client acknowledges a publish.
func (ctl *Controller) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubcomp:
	case packets.Pubrec:
		if pk.ReasonCode < packets.ErrUnspecifiedError.Code {
			return pk, nil // the QoS 2 flow goes on to PUBCOMP
		}
	default:
		return pk, nil
	}
	if c, ok := cl.Net.Conn.(*Conn); ok {
		c.ack(pk.PacketID)
	}
	return pk, nil
}

// OnPublishDropped counts a message mochi dropped because a client's outbound
// channel was full. Conn.Write never blocks, so this should not happen.
func (ctl *Controller) OnPublishDropped(cl *mqtt.Client, _ packets.Packet) {
	ctl.countDrop(cl.ID)
}

// maxTrackedClients bounds the per-client drop counts: beyond it, drops
// of clients not yet tracked are counted under OtherClients, so clients
// with random ids cannot grow the map for ever.
const maxTrackedClients = 1024

// OtherClients is the key of drops of clients beyond maxTrackedClients.
const OtherClients = "_other"

func (ctl *Controller) countDrop(clientID string) {
	ctl.dropped.Add(1)
	ctl.dropsMu.Lock()
	if _, ok := ctl.drops[clientID]; !ok && len(ctl.drops) >= maxTrackedClients {
		clientID = OtherClients
	}
	ctl.drops[clientID]++
	ctl.dropsMu.Unlock()
}

// Dropped is how many messages for clientID were dropped, across its
// connections.
func (ctl *Controller) Dropped(clientID string) uint64 {
	ctl.dropsMu.Lock()
	defer ctl.dropsMu.Unlock()
	return ctl.drops[clientID]
}

// QueuedBytes is how many bytes wait to be written, for all clients.
func (ctl *Controller) QueuedBytes() int64 { return ctl.queuedBytes.Load() }

// DroppedTotal is how many messages were dropped for all clients.
func (ctl *Controller) DroppedTotal() uint64 { return ctl.dropped.Load() }

// outboundLen returns a function that tells how many packets wait in mochi's
// outbound channel for cl. That channel (Client.State.outbound) is
// unexported, but what it holds is part of the client's queue: without it
// the Block gate would only see the queue once mochi's write loop, which
// lags under load, had moved it. Nil if mochi's internals have changed (a
// test checks they have not).
func outboundLen(cl *mqtt.Client) func() int {
	v := reflect.ValueOf(&cl.State).Elem().FieldByName("outbound")
	if !v.IsValid() || v.Kind() != reflect.Chan {
		return nil
	}
	return v.Len
}
