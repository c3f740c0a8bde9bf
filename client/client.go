// Package client is what an on-device Go service imports to join the bus.
// It speaks MQTT 5 to tarsmq (or any broker) over a Unix socket or TCP
// (TLS too), on eclipse/paho.golang's autopaho, and takes care of what a
// service should not get wrong:
//
//   - every publish is an envelope (package envelope) with the service's
//     source; QoS 1 publishes return the broker's verdict, a contract
//     rejection as a *RejectedError;
//   - reconnects with exponential backoff and jitter, a persistent session,
//     subscriptions restored, publishes made while disconnected kept in a
//     bounded queue and sent in order;
//   - health (ready, reconnected, shutdown, and a will for a crash) and
//     heartbeats when enabled;
//   - handlers run on their own goroutine per subscription, never on paho's
//     read loop, so a slow handler delays only its own messages; duplicate
//     envelopes are dropped when deduplication is on;
//   - request/response over MQTT 5 response topics.
//
// It reads the same environment variables as the Python client: MQTT_URL,
// MQTT_CLIENT_ID, MQTT_SOURCE_NAME, MQTT_KEEPALIVE, MQTT_ENABLE_HEALTH,
// MQTT_ENABLE_HEARTBEAT, MQTT_HEARTBEAT_INTERVAL, MQTT_DEDUPE_TTL,
// MQTT_DEDUPE_MAX_ENTRIES, MQTT_RECONNECT_MIN_DELAY, MQTT_RECONNECT_MAX_DELAY.
package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/tarsmq/tarsmq/envelope"
)

// dialTimeout bounds one connection attempt over a Unix socket (autopaho
// applies none to a custom dialer).
const dialTimeout = 10 * time.Second

// Client is a connection to the bus. Create it with New or FromEnv, then
// Connect; Close ends it.
type Client struct {
	cfg    Config
	ep     endpoint
	log    *slog.Logger
	source string

	cm     *autopaho.ConnectionManager
	ctx    context.Context // lives until Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	firstUp   chan struct{} // closed at the first connection
	firstOnce sync.Once
	fatal     chan error // a connection refusal that retrying cannot fix
	everUp    atomic.Bool
	lastErr   atomic.Pointer[error] // why the last connection attempt failed
	closed    atomic.Bool

	out     *outbox
	subsMu  sync.RWMutex
	subs    []*Subscription
	dedupe  *dedupe
	replies *replies
	stats   Stats
}

// New returns a client for cfg; it does not connect until Connect.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ep, _ := parseURL(cfg.URL) // validated
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		cfg: cfg, ep: ep, log: log.With("client", cfg.ClientID), source: cfg.source(),
		ctx: ctx, cancel: cancel,
		firstUp: make(chan struct{}),
		fatal:   make(chan error, 1),
		dedupe:  newDedupe(cfg.DedupeTTL.D(), cfg.DedupeMaxEntries),
	}
	c.out = newOutbox(c, cfg.PublishQueue)
	c.replies = newReplies(c)
	return c, nil
}

// FromEnv returns a client configured from the environment (see
// ConfigFromEnv to change the Config, a logger or TLS, before New).
func FromEnv() (*Client, error) {
	cfg, err := ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	return New(cfg)
}

// Connected reports whether a connection is up now.
func (c *Client) Connected() bool { return c.out.isConnected() }

// Source is the envelope source this client publishes under.
func (c *Client) Source() string { return c.source }

// ClientID is the MQTT client id.
func (c *Client) ClientID() string { return c.cfg.ClientID }

// Connect starts the connection and returns once it is up, or when ctx ends
// (the client keeps trying in the background until Close), or when the
// broker refuses the client in a way retrying cannot fix (bad credentials,
// a client id not allowed, no permission on the socket), which also stops
// the retries.
func (c *Client) Connect(ctx context.Context) error {
	if c.cm != nil {
		return errors.New("client: Connect called twice")
	}
	acfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{c.ep.url},
		KeepAlive:                     uint16(c.cfg.Keepalive.D() / time.Second),
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         uint32(c.cfg.SessionExpiry / time.Second),
		ReconnectBackoff:              c.backoff,
		ConnectTimeout:                dialTimeout,
		OnConnectionUp:                c.onUp,
		OnConnectionDown:              c.onDown,
		OnConnectError:                c.onConnectError,
		ConnectUsername:               c.ep.username,
		ConnectPassword:               c.ep.password,
		// autopaho's CONNECT properties leave RequestProblemInfo false,
		// which forbids the broker's reason strings: ask for them.
		ConnectPacketBuilder: func(cp *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if cp.Properties == nil {
				cp.Properties = &paho.ConnectProperties{}
			}
			cp.Properties.RequestProblemInfo = true
			return cp, nil
		},
		ClientConfig: paho.ClientConfig{
			ClientID:          c.cfg.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){c.receive},
			OnClientError:     func(err error) { c.log.Debug("connection error", "error", err) },
		},
	}
	if c.ep.tls {
		acfg.TlsCfg = c.cfg.TLS
		if acfg.TlsCfg == nil {
			acfg.TlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
	if c.ep.network == "unix" {
		acfg.AttemptConnection = func(ctx context.Context, _ autopaho.ClientConfig, _ *url.URL) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, dialTimeout)
			defer cancel()
			return (&net.Dialer{}).DialContext(ctx, "unix", c.ep.address)
		}
	}
	if c.cfg.EnableHealth {
		will, err := c.healthEnvelope(envelope.Health{OK: false, Event: "offline", Error: "connection lost"})
		if err != nil {
			return err
		}
		acfg.WillMessage = &paho.WillMessage{Topic: envelope.HealthTopic(c.source), Payload: will, QoS: 1, Retain: true}
	}
	cm, err := autopaho.NewConnection(c.ctx, acfg)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	c.cm = cm
	c.wg.Add(1)
	go c.out.drain()
	if c.cfg.EnableHeartbeat {
		c.wg.Add(1)
		go c.heartbeat()
	}
	select {
	case <-c.firstUp:
		return nil
	case err := <-c.fatal:
		c.cancel()
		<-cm.Done()
		return err
	case <-ctx.Done():
		if last := c.lastErr.Load(); last != nil {
			return fmt.Errorf("client: connect to %s: %w (last attempt: %v; still trying in the background)", c.ep.url.Redacted(), ctx.Err(), *last)
		}
		return fmt.Errorf("client: connect to %s: %w (still trying in the background)", c.ep.url.Redacted(), ctx.Err())
	}
}

// backoff is autopaho's wait before attempt n: none before the very first
// connection, then from the min delay doubling up to the max, each with
// jitter (a random point between half and all of it), so that a fleet of
// services reconnecting at once does not arrive together.
func (c *Client) backoff(attempt int) time.Duration {
	if attempt == 0 && !c.everUp.Load() {
		return 0
	}
	d := c.cfg.ReconnectMinDelay.D() << min(attempt, 20)
	if max := c.cfg.ReconnectMaxDelay.D(); d > max || d <= 0 {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}

// fatalCodes are CONNACK reasons that retrying cannot fix.
var fatalCodes = map[byte]bool{0x84: true, 0x85: true, 0x86: true, 0x87: true, 0x8A: true, 0x8C: true}

func (c *Client) onConnectError(err error) {
	var ce *autopaho.ConnackError
	var fatal error
	switch {
	case errors.As(err, &ce) && fatalCodes[ce.ReasonCode]:
		fatal = fmt.Errorf("client: the broker refused %q: %s (reason %#x)", c.cfg.ClientID, ce.Reason, ce.ReasonCode)
	case c.ep.network == "unix" && errors.Is(err, syscall.EACCES):
		// A process's groups do not change while it runs: retrying is
		// no use.
		fatal = fmt.Errorf("client: no permission to connect to the socket %s: the process must be in the socket's group (for the packaged broker: SupplementaryGroups=tarsmq in the service's unit, or usermod -aG tarsmq USER)", c.ep.address)
	}
	if fatal != nil {
		select {
		case c.fatal <- fatal:
		default:
		}
		return
	}
	c.lastErr.Store(&err)
	c.log.Debug("connect failed; retrying", "error", err)
}

// onUp runs when a connection comes up: subscriptions are restored, health
// published, then queued publishes go out, all off autopaho's goroutine.
func (c *Client) onUp(cm *autopaho.ConnectionManager, _ *paho.Connack) {
	reconnect := c.everUp.Swap(true)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.ctx, dialTimeout)
		defer cancel()
		c.resubscribe(ctx, cm, reconnect)
		if c.cfg.EnableHealth {
			event := "ready"
			if reconnect {
				event = "reconnected"
			}
			p, err := c.healthPacket(envelope.Health{OK: true, Event: event})
			if err == nil {
				err = c.publishNow(ctx, cm, p)
			}
			if err != nil {
				c.log.Warn("health not published", "event", event, "error", err)
			}
		}
		c.out.connected()
		if reconnect {
			c.log.Info("reconnected", "url", c.ep.url.Redacted())
		}
		c.firstOnce.Do(func() { close(c.firstUp) })
	}()
}

func (c *Client) onDown() bool {
	c.out.disconnected()
	c.log.Info("connection lost; reconnecting", "url", c.ep.url.Redacted())
	return true
}

// heartbeat publishes {ok:true, event:"heartbeat"} every interval while
// connected, at QoS 0.
func (c *Client) heartbeat() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.HeartbeatInterval.D())
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case now := <-t.C:
			if !c.out.isConnected() {
				continue
			}
			b, _ := json.Marshal(envelope.NewHeartbeat(now))
			p := &paho.Publish{Topic: envelope.KeepaliveTopic(c.cfg.ClientID), Payload: b}
			if _, err := c.cm.Publish(c.ctx, p); err != nil {
				c.log.Debug("heartbeat not sent", "error", err)
			}
		}
	}
}

// Close publishes {ok:false, event:"shutdown"} (with health on), waits for
// queued publishes to go out, disconnects cleanly (so no will is sent) and
// stops every goroutine, within ctx. It may be called more than once.
func (c *Client) Close(ctx context.Context) error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	var errs []error
	if c.cm != nil && c.out.isConnected() {
		if err := c.out.flush(ctx); err != nil {
			errs = append(errs, err)
		}
		if c.cfg.EnableHealth {
			p, err := c.healthPacket(envelope.Health{OK: false, Event: "shutdown"})
			if err == nil {
				err = c.publishNow(ctx, c.cm, p)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("publish shutdown health: %w", err))
			}
		}
	}
	c.out.close()
	if c.cm != nil {
		if err := c.cm.Disconnect(ctx); err != nil {
			errs = append(errs, fmt.Errorf("disconnect: %w", err))
		}
	}
	c.cancel()
	c.closeSubscriptions()
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("close: handlers still running: %w", ctx.Err()))
	}
	return errors.Join(errs...)
}
