package client

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/eclipse/paho.golang/paho"

	"github.com/tarsmq/tarsmq/envelope"
)

// ReplyTopicPrefix is where a client's replies arrive:
// tarsmq/reply/{client_id}.
const ReplyTopicPrefix = "tarsmq/reply/"

// replies matches responses to pending requests by MQTT 5 correlation data.
// The reply subscription is made on the first request and restored after
// every reconnect like any other; a request that ends (answered, or its ctx
// done) leaves nothing behind.
type replies struct {
	c       *Client
	topic   string
	mu      sync.Mutex
	sub     *Subscription
	pending map[string]chan Message
}

func newReplies(c *Client) *replies {
	return &replies{c: c, topic: ReplyTopicPrefix + c.cfg.ClientID, pending: map[string]chan Message{}}
}

// ensure subscribes to the reply topic once.
func (r *replies) ensure(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sub != nil {
		return nil
	}
	sub, err := r.c.Subscribe(ctx, r.topic, r.deliver, SubQoS(1))
	if err != nil {
		return err
	}
	r.sub = sub
	return nil
}

func (r *replies) deliver(_ context.Context, m Message) error {
	r.mu.Lock()
	ch, ok := r.pending[string(m.correlation)]
	delete(r.pending, string(m.correlation))
	r.mu.Unlock()
	if ok {
		ch <- m // buffered: the requester may have gone
	}
	return nil
}

// Request publishes data as an envelope of type typ on topic, at QoS 1 with
// an MQTT 5 response topic and correlation data, and waits for the reply
// until ctx ends.
func (c *Client) Request(ctx context.Context, topic, typ string, data any, opts ...PublishOption) (Message, error) {
	if err := c.replies.ensure(ctx); err != nil {
		return Message{}, err
	}
	corr := envelope.NewID()
	ch := make(chan Message, 1)
	c.replies.mu.Lock()
	c.replies.pending[corr] = ch
	c.replies.mu.Unlock()
	defer func() {
		c.replies.mu.Lock()
		delete(c.replies.pending, corr)
		c.replies.mu.Unlock()
	}()
	props := &paho.PublishProperties{ResponseTopic: c.replies.topic, CorrelationData: []byte(corr)}
	opts = append([]PublishOption{QoS(1)}, append(opts, withProperties(props))...)
	if err := c.PublishEvent(ctx, topic, typ, data, opts...); err != nil {
		return Message{}, err
	}
	select {
	case m := <-ch:
		return m, nil
	case <-ctx.Done():
		return Message{}, fmt.Errorf("client: no reply on %s: %w", topic, ctx.Err())
	}
}

// Reply answers a request with data as an envelope of type typ, sent to the
// request's response topic with its correlation data; the envelope's
// correlate is the request's id.
func (c *Client) Reply(ctx context.Context, req Message, typ string, data any, opts ...PublishOption) error {
	if req.responseTopic == "" {
		return errors.New("client: Reply to a message that is not a request (no response topic)")
	}
	props := &paho.PublishProperties{CorrelationData: req.correlation}
	if req.Envelope != nil {
		opts = append([]PublishOption{Correlate(req.Envelope.ID)}, opts...)
	}
	opts = append([]PublishOption{QoS(1)}, append(opts, withProperties(props))...)
	return c.PublishEvent(ctx, req.responseTopic, typ, data, opts...)
}

// IsRequest reports whether m expects a Reply.
func (m Message) IsRequest() bool { return m.responseTopic != "" }
