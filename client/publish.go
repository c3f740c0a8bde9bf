package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/tarsmq/tarsmq/envelope"
)

// Health is the data of a health.status envelope.
type Health = envelope.Health

// RejectedError is the broker refusing a QoS 1/2 publish, with its MQTT 5
// reason: for tarsmq's contract, 0x99 (payload format invalid) or 0x87 (not
// authorized) and a reason string naming the field.
type RejectedError struct {
	Topic  string
	Code   byte
	Reason string
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("client: broker refused the message on %s (reason %#x): %s", e.Topic, e.Code, e.Reason)
}

// Errors of Publish.
var (
	ErrQueueFull = errors.New("client: disconnected and the publish queue is full (MQTT_PUBLISH_QUEUE)")
	ErrClosed    = errors.New("client: closed")
)

// PublishOption changes one publish.
type PublishOption func(*publishOptions)

type publishOptions struct {
	qos       byte
	retain    bool
	correlate string
	id        string
	props     *paho.PublishProperties
}

// QoS sets the quality of service (default 0, as the Python client). At QoS
// 1 a publish returns once the broker has acknowledged it.
func QoS(q byte) PublishOption { return func(o *publishOptions) { o.qos = q } }

// Retain makes the broker keep the message for later subscribers.
func Retain() PublishOption { return func(o *publishOptions) { o.retain = true } }

// Correlate sets the envelope's correlate field.
func Correlate(id string) PublishOption { return func(o *publishOptions) { o.correlate = id } }

// WithID sets the envelope id instead of a random one.
func WithID(id string) PublishOption { return func(o *publishOptions) { o.id = id } }

func withProperties(p *paho.PublishProperties) PublishOption {
	return func(o *publishOptions) { o.props = p }
}

func applyPublish(opts []PublishOption) publishOptions {
	var o publishOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// PublishEvent publishes data (anything that marshals to a JSON object) in
// an envelope of type typ from this service. At QoS 1 it returns after the
// broker's PUBACK, or its refusal as a *RejectedError. While disconnected
// the publish waits in the queue, in order, until ctx ends.
func (c *Client) PublishEvent(ctx context.Context, topic, typ string, data any, opts ...PublishOption) error {
	o := applyPublish(opts)
	var eopts []envelope.Option
	if o.correlate != "" {
		eopts = append(eopts, envelope.WithCorrelate(o.correlate))
	}
	if o.id != "" {
		eopts = append(eopts, envelope.WithID(o.id))
	}
	e, err := envelope.New(typ, c.source, data, eopts...)
	if err != nil {
		return err
	}
	b, err := e.Marshal()
	if err != nil {
		return err
	}
	return c.publish(ctx, &paho.Publish{Topic: topic, QoS: o.qos, Retain: o.retain, Payload: b, Properties: o.props})
}

// PublishHealth publishes this service's health: retained, QoS 1, on
// system/health/{source}.
func (c *Client) PublishHealth(ctx context.Context, h Health) error {
	p, err := c.healthPacket(h)
	if err != nil {
		return err
	}
	return c.publish(ctx, p)
}

// Publish publishes a raw payload, for topics that carry no envelopes (the
// broker's contract.exempt).
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, opts ...PublishOption) error {
	o := applyPublish(opts)
	return c.publish(ctx, &paho.Publish{Topic: topic, QoS: o.qos, Retain: o.retain, Payload: payload, Properties: o.props})
}

func (c *Client) publish(ctx context.Context, p *paho.Publish) error {
	if c.cm == nil {
		return errors.New("client: Publish before Connect")
	}
	return c.out.publish(ctx, p)
}

// publishNow sends p on the current connection, turning a PUBACK with a
// failure reason into a *RejectedError.
func (c *Client) publishNow(ctx context.Context, cm *autopaho.ConnectionManager, p *paho.Publish) error {
	resp, err := cm.Publish(ctx, p)
	if resp != nil && resp.ReasonCode >= 0x80 {
		r := &RejectedError{Topic: p.Topic, Code: resp.ReasonCode}
		if resp.Properties != nil {
			r.Reason = resp.Properties.ReasonString
		}
		return r
	}
	return err
}

func (c *Client) healthEnvelope(h Health) ([]byte, error) {
	e, err := envelope.New(envelope.TypeHealth, c.source, h)
	if err != nil {
		return nil, err
	}
	return e.Marshal()
}

func (c *Client) healthPacket(h Health) (*paho.Publish, error) {
	b, err := c.healthEnvelope(h)
	if err != nil {
		return nil, err
	}
	return &paho.Publish{Topic: envelope.HealthTopic(c.source), QoS: 1, Retain: true, Payload: b}, nil
}

// outbox sends publishes: at once while connected, else through a bounded
// queue drained in order after the next connection. New publishes queue
// behind the old ones until the queue is empty again.
type outbox struct {
	c    *Client
	max  int
	wake chan struct{}

	mu     sync.Mutex
	link   bool // a connection is up
	direct bool // link up and queue empty: publish without queueing
	closed bool
	q      []*queued
}

type queued struct {
	ctx  context.Context
	p    *paho.Publish
	done chan error
}

func newOutbox(c *Client, max int) *outbox {
	return &outbox{c: c, max: max, wake: make(chan struct{}, 1)}
}

func (o *outbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *outbox) publish(ctx context.Context, p *paho.Publish) error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return ErrClosed
	}
	if o.direct {
		o.mu.Unlock()
		err := o.c.publishNow(ctx, o.c.cm, p)
		if !errors.Is(err, autopaho.ConnectionDownError) {
			return err
		}
		o.mu.Lock() // the connection went down just now: queue it
	}
	if len(o.q) >= o.max {
		o.mu.Unlock()
		o.c.stats.queueFull.Add(1)
		return ErrQueueFull
	}
	item := &queued{ctx: ctx, p: p, done: make(chan error, 1)}
	o.q = append(o.q, item)
	o.mu.Unlock()
	o.signal()
	select {
	case err := <-item.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("client: publish on %s not sent: %w", p.Topic, ctx.Err())
	}
}

// drain sends queued publishes, in order, whenever a connection is up.
func (o *outbox) drain() {
	defer o.c.wg.Done()
	for {
		select {
		case <-o.wake:
		case <-o.c.ctx.Done():
			return
		}
		for {
			o.mu.Lock()
			if !o.link || o.closed {
				o.mu.Unlock()
				break
			}
			if len(o.q) == 0 {
				o.direct = true
				o.mu.Unlock()
				break
			}
			item := o.q[0]
			o.q[0] = nil
			o.q = o.q[1:]
			o.mu.Unlock()
			if err := item.ctx.Err(); err != nil {
				item.done <- err
				continue
			}
			err := o.c.publishNow(item.ctx, o.c.cm, item.p)
			if errors.Is(err, autopaho.ConnectionDownError) {
				o.mu.Lock()
				o.q = append([]*queued{item}, o.q...)
				o.link = false
				o.mu.Unlock()
				break
			}
			item.done <- err
		}
	}
}

func (o *outbox) connected() {
	o.mu.Lock()
	o.link = true
	o.mu.Unlock()
	o.signal()
}

func (o *outbox) disconnected() {
	o.mu.Lock()
	o.link, o.direct = false, false
	o.mu.Unlock()
}

// Queued is how many publishes wait for a connection.
func (c *Client) Queued() int {
	c.out.mu.Lock()
	defer c.out.mu.Unlock()
	return len(c.out.q)
}

func (o *outbox) isConnected() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.link
}

// flush waits until the queue is empty, or ctx ends.
func (o *outbox) flush(ctx context.Context) error {
	for {
		o.mu.Lock()
		n := len(o.q)
		o.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("client: %d queued publishes not sent: %w", n, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// close fails whatever is still queued with ErrClosed.
func (o *outbox) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed, o.direct = true, false
	for _, item := range o.q {
		item.done <- ErrClosed
	}
	o.q = nil
}
