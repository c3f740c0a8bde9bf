package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// MQTT control packet types, as the high nibble of the fixed header.
const (
	typeConnack    = 2
	typePublish    = 3
	typePuback     = 4
	typeSuback     = 9
	typePingreq    = 12
	typePingresp   = 13
	typeDisconnect = 14
)

// bufSize is each connection's read and write buffer.
const bufSize = 64 << 10

// keepalive is the MQTT keepalive in seconds: the run pings every
// connection more often.
const keepalive = 60

// handler receives what a connection's read loop decodes. Both methods run
// on the read loop's goroutine.
type handler interface {
	onPublish(qos byte, pid uint16, topic, payload []byte) error
	onPuback(pid uint16, reason byte) error
}

// conn is one raw MQTT connection: hand-written PUBLISH and PUBACK on the hot
// path, mochi's codec for the rest. Reads happen on one goroutine; writes go
// through a buffered writer under wmu, flushed by the caller.
type conn struct {
	id      string
	version byte
	nc      net.Conn
	r       *bufio.Reader

	wmu     sync.Mutex
	w       *bufio.Writer
	unflush bool // written since the last flush (guarded by wmu)

	scratch []byte // a PUBLISH larger than the writer's free space (guarded by wmu)

	discard int    // bytes of the last packet still in r, to skip before the next
	big     []byte // body of a packet larger than r's buffer

	closing atomic.Bool // Close has begun: read errors are expected
	recvMax uint16      // the broker's Receive Maximum (65535 when it sent none)
}

// dial connects to ep, sends CONNECT and waits for CONNACK. recvMax, when
// not 0, is announced as the MQTT 5 Receive Maximum.
func dial(ctx context.Context, ep endpoint, version byte, id string, recvMax uint16) (*conn, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, err := d.DialContext(dctx, ep.network, ep.address)
	if err != nil {
		return nil, fmt.Errorf("client %s: connect to %s %s: %w", id, ep.network, ep.address, err)
	}
	c := &conn{id: id, version: version, nc: nc,
		r: bufio.NewReaderSize(nc, bufSize), w: bufio.NewWriterSize(nc, bufSize), recvMax: 65535}
	if err := c.handshake(ctx, ep, recvMax); err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

func (c *conn) handshake(ctx context.Context, ep endpoint, recvMax uint16) error {
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.nc.SetDeadline(deadline)
	defer func() { _ = c.nc.SetDeadline(time.Time{}) }()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: c.version,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: c.id,
			Clean:            true,
			Keepalive:        keepalive,
		},
	}
	if ep.username != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(ep.username)
		if ep.password != "" {
			pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(ep.password)
		}
	}
	if c.version == 5 && recvMax > 0 {
		pk.Properties.ReceiveMaximum = recvMax
	}
	body, err := c.exchange(pk, (*packets.Packet).ConnectEncode, typeConnack)
	if err != nil {
		return err
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack, Remaining: len(body)}, ProtocolVersion: c.version}
	if err := ack.ConnackDecode(body); err != nil {
		return fmt.Errorf("client %s: malformed CONNACK: %w", c.id, err)
	}
	if ack.ReasonCode != 0 {
		return fmt.Errorf("client %s: broker refused the connection: %s", c.id, reasonText(c.version, typeConnack, ack.ReasonCode, ack.Properties.ReasonString))
	}
	if c.version == 5 && ack.Properties.ReceiveMaximum > 0 {
		c.recvMax = ack.Properties.ReceiveMaximum
	}
	return nil
}

// subscribe subscribes to filter and waits for SUBACK. It runs before the
// read loop starts.
func (c *conn) subscribe(filter string, qos byte) error {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: c.version,
		PacketID:        1,
		Filters:         packets.Subscriptions{{Filter: filter, Qos: qos}},
	}
	_ = c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = c.nc.SetDeadline(time.Time{}) }()
	body, err := c.exchange(pk, (*packets.Packet).SubscribeEncode, typeSuback)
	if err != nil {
		return err
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback, Remaining: len(body)}, ProtocolVersion: c.version}
	if err := ack.SubackDecode(body); err != nil {
		return fmt.Errorf("client %s: malformed SUBACK: %w", c.id, err)
	}
	code := byte(0x80)
	if len(ack.ReasonCodes) == 1 {
		code = ack.ReasonCodes[0]
	}
	if code >= 0x80 {
		return fmt.Errorf("client %s: broker refused the subscription to %s: %s", c.id, filter, reasonText(c.version, typeSuback, code, ack.Properties.ReasonString))
	}
	if code < qos {
		return fmt.Errorf("client %s: broker granted QoS %d, not %d, on %s", c.id, code, qos, filter)
	}
	return nil
}

// exchange sends pk, encoded by enc, and returns the body of the answer,
// which must be a packet of type want. It runs before the read loop starts.
func (c *conn) exchange(pk packets.Packet, enc func(*packets.Packet, *bytes.Buffer) error, want byte) ([]byte, error) {
	var buf bytes.Buffer
	name := packets.PacketNames[pk.FixedHeader.Type]
	if err := enc(&pk, &buf); err != nil {
		return nil, fmt.Errorf("client %s: encode %s: %w", c.id, name, err)
	}
	if _, err := c.nc.Write(buf.Bytes()); err != nil {
		return nil, fmt.Errorf("client %s: send %s: %w", c.id, name, err)
	}
	hdr, body, err := c.readPacket()
	if err != nil {
		return nil, fmt.Errorf("client %s: waiting for the answer to %s: %w", c.id, name, err)
	}
	if hdr>>4 != want {
		return nil, fmt.Errorf("client %s: the broker answered %s with packet type %d", c.id, name, hdr>>4)
	}
	return body, nil
}

// publish writes a PUBLISH to the buffer; it is sent at the next flush, or
// when the buffer fills.
func (c *conn) publish(topic []byte, qos byte, pid uint16, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.unflush = true
	b := c.w.AvailableBuffer()
	if cap(b) < len(topic)+len(payload)+16 {
		c.scratch = encodePublish(c.scratch[:0], c.version, qos, pid, topic, payload)
		b = c.scratch
	} else {
		b = encodePublish(b, c.version, qos, pid, topic, payload)
	}
	if _, err := c.w.Write(b); err != nil {
		return c.writeErr(err)
	}
	return nil
}

// ack writes a PUBACK to the buffer.
func (c *conn) ack(pid uint16) error {
	var b [4]byte
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.unflush = true
	if _, err := c.w.Write(appendPuback(b[:0], pid)); err != nil {
		return c.writeErr(err)
	}
	return nil
}

// appendPuback appends a PUBACK with success: the same bytes in 3.1.1 and 5.
func appendPuback(b []byte, pid uint16) []byte {
	return append(b, typePuback<<4, 2, byte(pid>>8), byte(pid))
}

// parsePuback decodes a PUBACK body: the packet id, and in MQTT 5 the
// reason code when the packet is longer than the id.
func parsePuback(version byte, body []byte) (pid uint16, reason byte, err error) {
	if len(body) < 2 {
		return 0, 0, errors.New("malformed PUBACK: no packet id")
	}
	pid = binary.BigEndian.Uint16(body)
	if version == 5 && len(body) > 2 {
		reason = body[2]
	}
	return pid, reason, nil
}

// flush sends what is buffered, if anything.
func (c *conn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.unflush {
		return nil
	}
	c.unflush = false
	if err := c.w.Flush(); err != nil {
		return c.writeErr(err)
	}
	return nil
}

func (c *conn) writeErr(err error) error {
	if c.closing.Load() {
		return errClosing
	}
	return fmt.Errorf("client %s: write: %w", c.id, err)
}

// errClosing ends a loop when the run closes its connections.
var errClosing = errors.New("connection closing")

// readPacket returns the next packet's fixed header byte and body. The body
// is valid until the next call.
func (c *conn) readPacket() (byte, []byte, error) {
	if c.discard > 0 {
		_, _ = c.r.Discard(c.discard)
		c.discard = 0
	}
	hdr, err := c.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		b, err := c.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mult
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, errors.New("malformed remaining length")
		}
		mult <<= 7
	}
	if n <= c.r.Size() {
		body, err := c.r.Peek(n)
		if err != nil {
			return 0, nil, err
		}
		c.discard = n
		return hdr, body, nil
	}
	if cap(c.big) < n {
		c.big = make([]byte, n)
	}
	body := c.big[:n]
	if _, err := io.ReadFull(c.r, body); err != nil {
		return 0, nil, err
	}
	return hdr, body, nil
}

// buffered reports how many received bytes wait to be read.
func (c *conn) buffered() int { return c.r.Buffered() - c.discard }

// readLoop decodes packets for h until the connection ends, flushing the
// PUBACKs h queued whenever nothing more is buffered. It returns nil when
// the run closed the connection.
func (c *conn) readLoop(h handler) error {
	err := c.loop(h)
	if c.closing.Load() || errors.Is(err, errClosing) {
		return nil
	}
	return err
}

func (c *conn) loop(h handler) error {
	for {
		if c.buffered() == 0 {
			if err := c.flush(); err != nil {
				return err
			}
		}
		hdr, body, err := c.readPacket()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("client %s: the broker closed the connection", c.id)
			}
			return fmt.Errorf("client %s: read: %w", c.id, err)
		}
		switch hdr >> 4 {
		case typePublish:
			qos, pid, topic, payload, err := parsePublish(c.version, hdr, body)
			if err != nil {
				return fmt.Errorf("client %s: %w", c.id, err)
			}
			if err := h.onPublish(qos, pid, topic, payload); err != nil {
				return err
			}
		case typePuback:
			pid, reason, err := parsePuback(c.version, body)
			if err != nil {
				return fmt.Errorf("client %s: %w", c.id, err)
			}
			if err := h.onPuback(pid, reason); err != nil {
				return err
			}
		case typeDisconnect:
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect, Remaining: len(body)}, ProtocolVersion: c.version}
			_ = pk.DisconnectDecode(body)
			return fmt.Errorf("client %s: the broker disconnected it: %s", c.id, reasonText(c.version, typeDisconnect, pk.ReasonCode, pk.Properties.ReasonString))
		case typePingresp:
		default:
			return fmt.Errorf("client %s: unexpected packet type %d from the broker", c.id, hdr>>4)
		}
	}
}

// ping sends a PINGREQ, unless the connection is busy writing, which does
// as well.
func (c *conn) ping() {
	if c.wmu.TryLock() {
		if _, err := c.w.Write([]byte{typePingreq << 4, 0}); err == nil {
			_ = c.w.Flush()
			c.unflush = false
		}
		c.wmu.Unlock()
	}
}

// ping sends every connection a PINGREQ each third of the keepalive until
// the run ends, so that the broker keeps the idle ones.
func (r *run) ping() {
	defer r.loops.Done()
	tick := time.NewTicker(keepalive * time.Second / 3)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-r.ctx.Done():
			return
		}
		for _, c := range r.conns {
			c.ping()
		}
	}
}

// close sends DISCONNECT and closes the connection, which ends readLoop.
func (c *conn) close() {
	c.closing.Store(true)
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	if c.wmu.TryLock() { // a sender blocked in Write holds it; the close below frees it
		_, _ = c.w.Write([]byte{typeDisconnect << 4, 0})
		_ = c.w.Flush()
		c.wmu.Unlock()
	}
	_ = c.nc.Close()
}
