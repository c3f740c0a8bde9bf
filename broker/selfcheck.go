package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// selfCheckTopic carries the self-check's messages; "$" topics are not seen
// by "#" subscriptions and not checked by the contract.
const selfCheckTopic = "$tarsmq/selfcheck"

// selfCheck sends a message through the broker to itself.
type selfCheck struct {
	seq     atomic.Uint64
	sent    atomic.Int64 // messages published, kept out of the message counts
	mu      sync.Mutex
	waiting map[string]chan struct{}
}

// subscribe attaches the self-check's inline subscription.
func (s *selfCheck) subscribe(srv *mqtt.Server) error {
	s.waiting = map[string]chan struct{}{}
	return srv.Subscribe(selfCheckTopic, 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		s.mu.Lock()
		ch := s.waiting[string(pk.Payload)]
		delete(s.waiting, string(pk.Payload))
		s.mu.Unlock()
		if ch != nil {
			close(ch)
		}
	})
}

// expect returns a channel closed when the message nonce comes back.
func (s *selfCheck) expect(nonce string) <-chan struct{} {
	ch := make(chan struct{})
	s.mu.Lock()
	s.waiting[nonce] = ch
	s.mu.Unlock()
	return ch
}

// forget stops waiting for nonce.
func (s *selfCheck) forget(nonce string) {
	s.mu.Lock()
	delete(s.waiting, nonce)
	s.mu.Unlock()
}

// SelfCheck reports whether the broker works: it is running, its store
// answers, and a message published inline comes back through its topic
// tree. systemd's watchdog is petted and /healthz says 200 only while it
// passes.
func (b *Broker) SelfCheck(ctx context.Context) error {
	if !b.started.Load() || b.closing.Load() {
		return errors.New("broker not running")
	}
	if err := b.st.Ping(); err != nil {
		return err
	}
	nonce := strconv.FormatUint(b.check.seq.Add(1), 10)
	ch := b.check.expect(nonce)
	defer b.check.forget(nonce)
	if err := b.srv.Publish(selfCheckTopic, []byte(nonce), false, 0); err != nil {
		return fmt.Errorf("self-check publish: %w", err)
	}
	b.check.sent.Add(1)
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("self-check message did not come back: %w", ctx.Err())
	}
}
