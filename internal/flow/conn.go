package flow

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// linger bounds how long a closing Conn keeps writing what was queued before
// it, such as the DISCONNECT the broker sends at shutdown.
const linger = 100 * time.Millisecond

// Conn wraps one client's network connection. The broker writes encoded
// packets to it and Conn never makes the broker wait for the network: control
// packets are sent at once and in order, PUBLISH packets while the client has
// send quota (its Receive Maximum), and the rest wait, in order, until the
// client acknowledges earlier ones. A writer goroutine sends whatever is ready
// in batches. What waits is bounded by the queue limits and the slow
// subscriber policy.
type Conn struct {
	net.Conn
	ctl *Controller

	mu         sync.Mutex
	client     *mqtt.Client
	clientID   string
	quota      int                 // QoS 1/2 publishes the client can still take
	inflight   map[uint16]struct{} // QoS 1/2 packet ids written and not acknowledged
	ready      bool                // CONNACK was written: publishes may follow
	resuming   bool                // the session is being resumed: publishes wait for established
	adopted    map[uint16]uint64   // packet ids of messages being adopted from the previous client, with their seq
	partial    []byte              // the start of a packet the broker has not finished writing
	held       []message           // publishes waiting for quota, oldest first
	out        [][]byte            // packets ready for the writer, in order
	outMsgs    int                 // publishes among out
	outBytes   int64               // and their size
	pendMsgs   atomic.Int64        // publishes accepted and not yet written to the socket (written under mu)
	pendBytes  atomic.Int64        // and their size
	chanLen    func() int          // packets still in mochi's outbound channel for this client
	stalled    bool                // a publisher gave up waiting for this client
	lossy      bool                // its socket stayed full: its QoS 0 messages are dropped until it catches up
	room       chan struct{}       // closed when pending falls below the limits
	closed     bool
	lingerEnd  time.Time
	writeStart atomic.Int64 // when the write under way began (Unix ns); 0: none
	dropped    uint64       // messages this connection lost to the queue limits
	dropLog    time.Time    // when drops were last logged
	dropSince  uint64       // drops since then

	wake chan struct{} // wakes the writer
	done chan struct{} // closed when the writer has exited
}

func newConn(ctl *Controller, c net.Conn) *Conn {
	fc := &Conn{
		Conn:     c,
		ctl:      ctl,
		quota:    ctl.cfg.MaxInflight,
		inflight: make(map[uint16]struct{}),
		chanLen:  func() int { return 0 },
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	go fc.writeLoop()
	return fc
}

// bind ties the connection to the client that logged in on it.
func (c *Conn) bind(cl *mqtt.Client, quota int, chanLen func() int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.client, c.clientID = cl, cl.ID
	c.quota = quota - len(c.inflight)
	if chanLen != nil {
		c.chanLen = chanLen
	}
}

// Write takes whole or partial encoded packets from the broker. It only fails
// once the connection is closed.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	buf := make([]byte, len(c.partial)+len(p))
	copy(buf, c.partial)
	copy(buf[len(c.partial):], p)
	c.partial = nil
	for len(buf) > 0 {
		n, ok, err := frame(buf)
		if err == nil && !ok {
			c.partial = buf
			break
		}
		if err == nil {
			err = c.acceptLocked(buf[:n:n])
		}
		if err != nil {
			c.closeLocked()
			return 0, err
		}
		buf = buf[n:]
	}
	c.signal()
	return len(p), nil
}

func (c *Conn) acceptLocked(pkt []byte) error {
	switch pkt[0] >> 4 {
	case typePublish:
		m, err := parsePublish(pkt)
		if err != nil {
			return err
		}
		if seq, ok := c.adopted[m.id]; ok && m.qos > 0 {
			delete(c.adopted, m.id)
			m.adopted, m.seq = c.resuming, seq
		} else if c.resuming && m.dup {
			m.seq = c.ctl.seq.of(c.clientID, m.id)
		}
		if !m.dup && c.overLimitLocked(m.qos) { // a resend (DUP) is already counted in its session
			c.dropLocked(m)
			return nil
		}
		c.addPendingLocked(1, int64(len(pkt)))
		if c.ready && !c.resuming && len(c.held) == 0 && c.canSendLocked(m) {
			c.sendLocked(m)
		} else {
			c.held = append(c.held, m)
		}
	case typeConnack:
		c.out = append(c.out, pkt)
		c.ready = true
		// A resumed session's resends follow; they are put in order once
		// the broker has written them all (established).
		c.resuming = sessionPresent(pkt)
		c.releaseLocked()
	default:
		c.out = append(c.out, pkt)
	}
	return nil
}

func (c *Conn) canSendLocked(m message) bool {
	if m.qos == 0 || c.quota > 0 {
		return true
	}
	_, resend := c.inflight[m.id]
	return resend
}

func (c *Conn) sendLocked(m message) {
	if m.qos > 0 {
		if _, ok := c.inflight[m.id]; !ok {
			c.inflight[m.id] = struct{}{}
			c.quota--
		}
	}
	c.out = append(c.out, m.b)
	c.outMsgs++
	c.outBytes += int64(len(m.b))
}

// releaseLocked moves held publishes to the writer while quota lasts.
func (c *Conn) releaseLocked() {
	for c.ready && !c.resuming && len(c.held) > 0 && c.canSendLocked(c.held[0]) {
		m := c.held[0]
		c.held[0] = message{}
		c.held = c.held[1:]
		c.sendLocked(m)
	}
	if len(c.held) == 0 {
		c.held = nil
	}
}

// established ends the resumption of a session: the broker has written
// every resend. What was held meanwhile goes out in its original order.
func (c *Conn) established() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.resuming {
		return
	}
	c.resuming = false
	var removed []message
	c.held, removed = resendOrder(c.held)
	for _, m := range removed {
		c.addPendingLocked(-1, -int64(len(m.b)))
	}
	c.releaseLocked()
	c.updateLocked()
	c.signal()
}

// adopting marks the publish with packet id id, about to be written, as
// adopted from the session's previous client, published as seq.
func (c *Conn) adopting(id uint16, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.adopted == nil {
		c.adopted = make(map[uint16]uint64)
	}
	c.adopted[id] = seq
}

// ack returns send quota for a QoS 1/2 publish the client has finished with
// (PUBACK, PUBCOMP, or PUBREC with an error reason).
func (c *Conn) ack(id uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.inflight[id]; !ok {
		return
	}
	delete(c.inflight, id)
	c.quota++
	c.releaseLocked()
	c.signal()
}

// The queue of a client is what mochi's outbound channel holds for it plus
// what this Conn holds; the limits apply to the two together.
func (c *Conn) queuedLocked() int { return int(c.pendMsgs.Load()) + c.chanLen() }

func (c *Conn) fullLocked() bool { return c.full() }

// overLimitLocked decides whether a publish at qos arriving now is dropped.
func (c *Conn) overLimitLocked(qos byte) bool {
	if !c.fullLocked() {
		return false
	}
	cfg := &c.ctl.cfg
	if (cfg.Policy.blocks(qos) || (cfg.Policy == ByQoS && !c.lossy && !c.networkBound())) && !c.stalled {
		// Publishers wait at the gate for room; what gets past it (several
		// publishers at once, retained messages, wills) may overshoot.
		return c.queuedLocked() >= 2*cfg.QueueMessages || c.pendBytes.Load() >= 2*cfg.QueueBytes
	}
	return true
}

// updateLocked wakes publishers waiting for room once there is some, and
// ends a stall once the client has caught up.
func (c *Conn) updateLocked() {
	if c.room != nil && (c.closed || c.roomy()) {
		close(c.room)
		c.room = nil
	}
	cfg := &c.ctl.cfg
	if (c.stalled || c.lossy) && c.queuedLocked() <= cfg.QueueMessages/2 && c.pendBytes.Load() <= cfg.QueueBytes/2 {
		if c.stalled {
			c.ctl.Log.Info("subscriber caught up; publishers wait for it again", "client", c.clientID)
		}
		c.stalled, c.lossy = false, false
	}
}

func (c *Conn) dropLocked(m message) {
	c.dropped++
	c.ctl.countDrop(c.clientID)
	if m.qos > 0 && c.client != nil {
		// The broker recorded the message as in flight to this client; it
		// will never be sent, so it must not wait there for an ack.
		c.ctl.seq.done(c.clientID, m.id)
		if c.client.State.Inflight.Delete(m.id) {
			atomic.AddInt64(&c.ctl.server.Info.Inflight, -1)
			if c.ctl.OnDropInflight != nil {
				c.ctl.OnDropInflight(c.client, m.id)
			}
		}
	}
	c.dropSince++
	if now := time.Now(); now.Sub(c.dropLog) >= dropLogEvery {
		c.ctl.Log.Warn("subscriber too slow: dropping its messages beyond the queue limit",
			"client", c.clientID, "dropped", c.dropSince, "total", c.dropped, "queued", c.queuedLocked(), "queued_bytes", c.pendBytes.Load())
		c.dropLog, c.dropSince = now, 0
	}
}

// dropLogEvery rate-limits the slow-subscriber warning per connection.
const dropLogEvery = 10 * time.Second

// waitForRoom blocks while the client's queue is full, until done is
// closed, in which case the client is marked stalled. It returns at once for
// a client that disconnected or was already marked stalled. With
// untilNetworkBound (a QoS 0 message) it also returns once the client stops
// taking what it is sent, and marks it lossy: until it catches up its QoS 0
// messages are dropped and no QoS 0 publisher waits for it.
func (c *Conn) waitForRoom(done <-chan struct{}, untilNetworkBound bool) {
	var poll <-chan time.Time
	if untilNetworkBound {
		t := time.NewTicker(networkStall / 10)
		defer t.Stop()
		poll = t.C
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for !c.stalled && !c.closed && c.fullLocked() {
		if untilNetworkBound && (c.lossy || c.networkBound()) {
			c.lossy = true
			return
		}
		if c.room == nil {
			c.room = make(chan struct{})
		}
		room := c.room
		c.mu.Unlock()
		select {
		case <-room:
			c.mu.Lock()
		case <-poll:
			c.mu.Lock()
		case <-done:
			c.mu.Lock()
			if !c.stalled && !c.closed && c.fullLocked() {
				c.stalled = true
				c.ctl.Log.Warn("subscriber not keeping up; publishers stop waiting for it and its excess messages are dropped until it catches up",
					"client", c.clientID, "queued", c.queuedLocked(), "queued_bytes", c.pendBytes.Load())
			}
			return
		}
	}
}

// roomy reports whether the queue has fallen a quarter below its limits:
// waiting publishers are woken then, not at the first free slot, so that
// each wake-up moves a batch rather than one message.
func (c *Conn) roomy() bool {
	cfg := &c.ctl.cfg
	inChan := c.chanLen()
	pending := c.pendBytes.Load()
	return int(c.pendMsgs.Load())+inChan <= cfg.QueueMessages*3/4 && pending <= cfg.QueueBytes*3/4 &&
		(cfg.OutboundLimit <= 0 || inChan <= cfg.OutboundLimit*3/4) &&
		(cfg.TotalBytes <= 0 || pending == 0 || c.ctl.queuedBytes.Load() <= cfg.TotalBytes*3/4)
}

// full reports whether the client's queue is full: a publisher would wait
// for it, or its next QoS 0 message be dropped. Without the lock it may be
// stale; waitForRoom checks again under the lock.
func (c *Conn) full() bool {
	cfg := &c.ctl.cfg
	inChan := c.chanLen()
	pending := c.pendBytes.Load()
	return int(c.pendMsgs.Load())+inChan >= cfg.QueueMessages || pending >= cfg.QueueBytes ||
		// mochi's outbound channel must never fill: mochi would drop.
		(cfg.OutboundLimit > 0 && inChan >= cfg.OutboundLimit) ||
		// Over the broker's total, every client with a backlog is full;
		// one without may still take a message, so each keeps moving.
		(cfg.TotalBytes > 0 && pending > 0 && c.ctl.queuedBytes.Load() >= cfg.TotalBytes)
}

// networkStall is how long a write must have been blocked before the client
// counts as slow (its socket full) rather than the broker as busy. A socket
// fills within a few hundred small packets, so a reader that is merely
// descheduled for a moment blocks writes too: the threshold must be well
// above a scheduler's time slice, and a publisher waits that long at most
// once per episode, since the client is then marked lossy until it
// catches up.
const networkStall = 50 * time.Millisecond

// networkBound reports whether the writer is stuck in a write: the client
// does not take what it is sent, so its backlog is its own doing.
func (c *Conn) networkBound() bool {
	start := c.writeStart.Load()
	return start != 0 && time.Since(time.Unix(0, start)) > networkStall
}

func (c *Conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Close stops reading at once and lets the writer flush what was queued for a
// short linger (so a final DISCONNECT reaches the client), then closes the
// network connection. Publishes still held are discarded here; QoS 1/2 ones
// stay in the client's session.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closeLocked()
	_ = c.Conn.SetReadDeadline(time.Now())
	return nil
}

func (c *Conn) closeLocked() {
	if c.closed {
		return
	}
	c.closed = true
	c.lingerEnd = time.Now().Add(linger)
	_ = c.Conn.SetWriteDeadline(c.lingerEnd)
	c.held = nil
	c.updateLocked()
	c.signal()
}

// SetDeadline is the broker's keepalive: it applies to reads only, since
// writes have the writer's own timeout.
func (c *Conn) SetDeadline(t time.Time) error {
	return c.Conn.SetReadDeadline(t)
}

// SetWriteDeadline is ignored: the writer sets its own.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }

// Client is the mochi client logged in on this connection, nil before
// CONNECT.
func (c *Conn) Client() *mqtt.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.client
}

// Dropped is how many messages this connection lost to the queue limits.
func (c *Conn) Dropped() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}

// isClosed reports whether the connection is closed.
func (c *Conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// isLossy reports whether the client's QoS 0 messages are being dropped
// because its socket stayed full. Without the lock it may be stale.
func (c *Conn) isLossy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lossy
}
