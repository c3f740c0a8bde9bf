// Package mqtttest is a bare MQTT 3.1.1/5.0 client for tests, built on
// mochi's packet codec. Unlike a full client library it acknowledges nothing
// on its own and hides no packet, so a test sees the wire as the broker wrote
// it: how many QoS 1 messages are unacknowledged at once, which reason code a
// PUBACK carries, whether a message arrived twice.
package mqtttest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Protocol versions.
const (
	V311 byte = 4
	V5   byte = 5
)

// Client is one raw MQTT connection. Its reader goroutine decodes every
// packet the broker sends and queues it, so the socket is always read unless
// the test pauses reading.
type Client struct {
	t       testing.TB
	conn    net.Conn
	version byte

	wmu    sync.Mutex
	nextID uint16

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []packets.Packet // received, not yet taken
	readErr error
	paused  bool

	done chan struct{}
}

// Dial connects to a broker at network/address ("tcp", "127.0.0.1:1883" or
// "unix", "/path/to.sock") without sending CONNECT.
func Dial(t testing.TB, network, address string, version byte) *Client {
	t.Helper()
	conn, err := net.DialTimeout(network, address, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, address, err)
	}
	return New(t, conn, version)
}

// New is a client on a connection already made (such as a TLS one),
// without CONNECT sent.
func New(t testing.TB, conn net.Conn, version byte) *Client {
	c := &Client{t: t, conn: conn, version: version, done: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.readLoop()
	t.Cleanup(func() { _ = c.conn.Close(); c.ResumeReading(); <-c.done })
	return c
}

// Connect sends CONNECT with clientID (and whatever edit changes) and waits
// for CONNACK, which it returns.
func (c *Client) Connect(clientID string, edit func(*packets.Packet)) packets.Packet {
	c.t.Helper()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: c.version,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: clientID,
			Clean:            true,
			Keepalive:        30,
		},
	}
	if edit != nil {
		edit(&pk)
	}
	c.Send(pk)
	return c.Expect(packets.Connack, 0)
}

// Subscribe subscribes to filter at qos and waits for SUBACK.
func (c *Client) Subscribe(filter string, qos byte) packets.Packet {
	c.t.Helper()
	id := c.id()
	c.Send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    id,
		Filters:     packets.Subscriptions{{Filter: filter, Qos: qos}},
	})
	return c.Expect(packets.Suback, id)
}

// Publish sends a PUBLISH. For QoS 1 it waits for and returns the PUBACK;
// for QoS 0 it returns an empty packet.
func (c *Client) Publish(topic string, payload []byte, qos byte, retain bool) packets.Packet {
	c.t.Helper()
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
		TopicName:   topic,
		Payload:     payload,
	}
	if qos > 0 {
		pk.PacketID = c.id()
	}
	c.Send(pk)
	if qos == 1 {
		return c.Expect(packets.Puback, pk.PacketID)
	}
	return packets.Packet{}
}

// PublishQoS2 publishes at QoS 2 and returns the PUBREC. A successful
// PUBREC (reason below 0x80) is answered with PUBREL, and the PUBCOMP
// awaited, so the flow is complete when it returns.
func (c *Client) PublishQoS2(topic string, payload []byte, retain bool) packets.Packet {
	c.t.Helper()
	id := c.id()
	c.Send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Retain: retain},
		TopicName:   topic,
		Payload:     payload,
		PacketID:    id,
	})
	rec := c.Expect(packets.Pubrec, id)
	if rec.ReasonCode < 0x80 {
		c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: id})
		c.Expect(packets.Pubcomp, id)
	}
	return rec
}

// Ack acknowledges a received QoS 1 PUBLISH.
func (c *Client) Ack(pk packets.Packet) {
	c.t.Helper()
	c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
}

// Disconnect sends DISCONNECT, if the connection is still up, and closes
// it. It may be called from any goroutine.
func (c *Client) Disconnect() {
	_ = c.TrySend(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	_ = c.conn.Close()
}

// Kill closes the connection without DISCONNECT, as a crash would: the
// broker sends the client's will.
func (c *Client) Kill() { _ = c.conn.Close() }

func (c *Client) id() uint16 {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	return c.nextID
}

// Send encodes and writes pk.
func (c *Client) Send(pk packets.Packet) {
	c.t.Helper()
	if err := c.TrySend(pk); err != nil {
		c.t.Fatalf("send %s: %v", packets.PacketNames[pk.FixedHeader.Type], err)
	}
}

// TrySend is Send returning the error.
func (c *Client) TrySend(pk packets.Packet) error {
	pk.ProtocolVersion = c.version
	b, err := Encode(pk)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err = c.conn.Write(b)
	return err
}

// Encode encodes a packet a client sends (or, for tests of the broker's
// writer, a CONNACK), for pk.ProtocolVersion (0: 3.1.1).
func Encode(pk packets.Packet) ([]byte, error) {
	if pk.ProtocolVersion == 0 {
		pk.ProtocolVersion = V311
	}
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Connack:
		err = pk.ConnackEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		err = fmt.Errorf("mqtttest cannot encode packet type %d", pk.FixedHeader.Type)
	}
	return buf.Bytes(), err
}

// PauseReading stops taking bytes from the socket, as a stuck subscriber
// would, until ResumeReading.
func (c *Client) PauseReading() {
	c.mu.Lock()
	c.paused = true
	c.mu.Unlock()
}

// ResumeReading undoes PauseReading.
func (c *Client) ResumeReading() {
	c.mu.Lock()
	c.paused = false
	c.cond.Broadcast()
	c.mu.Unlock()
}

func (c *Client) readLoop() {
	defer close(c.done)
	r := bufio.NewReader(c.conn)
	for {
		c.mu.Lock()
		for c.paused {
			c.cond.Wait()
		}
		c.mu.Unlock()
		pk, err := c.readPacket(r)
		c.mu.Lock()
		if err != nil {
			c.readErr = err
			c.cond.Broadcast()
			c.mu.Unlock()
			return
		}
		c.queue = append(c.queue, pk)
		c.cond.Broadcast()
		c.mu.Unlock()
	}
}

func (c *Client) readPacket(r *bufio.Reader) (packets.Packet, error) {
	var pk packets.Packet
	b, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining, _, err = packets.DecodeLength(r)
	if err != nil {
		return pk, err
	}
	body := make([]byte, pk.FixedHeader.Remaining)
	if _, err := io.ReadFull(r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = c.version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Unsuback:
		err = pk.UnsubackDecode(body)
	case packets.Pingresp:
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	default:
		err = fmt.Errorf("unexpected packet type %d from broker", pk.FixedHeader.Type)
	}
	return pk, err
}

// ErrTimeout is returned by Next when nothing matching arrived in time.
var ErrTimeout = errors.New("mqtttest: timed out")

// Next removes and returns the first received packet of type typ (with
// packet id id, unless id is 0), waiting up to timeout. Other packets stay
// queued in order.
func (c *Client) Next(typ byte, id uint16, timeout time.Duration) (packets.Packet, error) {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer timer.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for i, pk := range c.queue {
			if pk.FixedHeader.Type == typ && (id == 0 || pk.PacketID == id) {
				c.queue = append(c.queue[:i:i], c.queue[i+1:]...)
				return pk, nil
			}
		}
		if c.readErr != nil {
			return packets.Packet{}, fmt.Errorf("connection ended waiting for %s: %w", packets.PacketNames[typ], c.readErr)
		}
		if !time.Now().Before(deadline) {
			return packets.Packet{}, fmt.Errorf("%w waiting %v for %s", ErrTimeout, timeout, packets.PacketNames[typ])
		}
		c.cond.Wait()
	}
}

// Expect is Next with a 10 second timeout that fails the test.
func (c *Client) Expect(typ byte, id uint16) packets.Packet {
	c.t.Helper()
	pk, err := c.Next(typ, id, 10*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	return pk
}

// Closed waits up to timeout for the broker to close the connection and
// returns the error the read ended with, or nil if it is still open.
func (c *Client) Closed(timeout time.Duration) error {
	select {
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.readErr
	case <-time.After(timeout):
		return nil
	}
}

// Persistent edits a CONNECT so that the session outlives the connection
// (clean start off, session expiry an hour): pass it to Connect.
func Persistent(pk *packets.Packet) {
	pk.Connect.Clean = false
	pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
}
