// Package bench is a load generator for MQTT brokers: publishers and
// subscribers on raw connections (hand-written PUBLISH and PUBACK codecs,
// buffered writes, batched acknowledgements), so that the generator costs
// the machine little next to the broker it measures. Each payload carries
// its publisher, sequence number and send time at fixed offsets, so
// receivers count loss and duplicates and time every delivery without
// parsing JSON. By default payloads are valid envelopes of the bus contract.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes one run. Zero values take the defaults noted.
type Config struct {
	// URL of the broker: unix:///path, tcp://host:port or
	// mqtt://[user:pass@]host[:port].
	URL string
	// Version is the MQTT protocol: 4 (3.1.1) or 5 (default).
	Version byte
	// Scenario is FanIn (default), FanOut, Many or ReqRep.
	Scenario string
	// Publishers (requesters in ReqRep) and Subscribers (0: 4 publishers
	// and 1 subscriber for FanIn, 1 and 4 for FanOut, 4 and 4 for Many, 4
	// requesters and the one responder for ReqRep).
	Publishers, Subscribers int
	// QoS of every publish and subscription: 0 or 1.
	QoS byte
	// Size of every payload in bytes (default 200).
	Size int
	// Rate is the total messages per second across publishers; 0 sends
	// flat out.
	Rate float64
	// Duration is how long publishers send (default 5s), unless Messages,
	// the count per publisher, is above 0.
	Duration time.Duration
	Messages int
	// Inflight is each publisher's QoS 1 window (default 100), in MQTT 5
	// never above the broker's Receive Maximum; in ReqRep also the requests
	// a requester has outstanding.
	Inflight int
	// ReceiveMaximum is what receiving clients announce in an MQTT 5
	// CONNECT; 0 leaves it out.
	ReceiveMaximum uint16
	// Raw sends plain bytes instead of envelopes.
	Raw bool
	// TopicPrefix (default "bench") and ClientPrefix (default "bench"),
	// to which a random run id is added.
	TopicPrefix, ClientPrefix string
	// Drain is how long to wait for deliveries that make no progress
	// (default 5s): after the last publish for stragglers, and during the
	// run before calling it stalled.
	Drain time.Duration
	// Progress, if set, is called about four times a second with the
	// messages sent and delivered so far.
	Progress func(sent, delivered uint64)
}

// WithDefaults returns c with its zero fields set to their defaults, or an
// error naming the first value out of range.
func (c Config) WithDefaults() (Config, error) {
	orDefault(&c.Version, 5)
	orDefault(&c.Scenario, FanIn)
	pubs, subs := 4, 4
	switch c.Scenario {
	case FanIn, ReqRep:
		subs = 1
	case FanOut:
		pubs = 1
	case Many:
	default:
		return c, fmt.Errorf("scenario %q: use %s, %s, %s or %s", c.Scenario, FanIn, FanOut, Many, ReqRep)
	}
	orDefault(&c.Publishers, pubs)
	orDefault(&c.Subscribers, subs)
	orDefault(&c.Size, 200)
	orDefault(&c.Duration, 5*time.Second)
	orDefault(&c.Inflight, 100)
	orDefault(&c.TopicPrefix, "bench")
	orDefault(&c.ClientPrefix, "bench")
	orDefault(&c.Drain, 5*time.Second)
	switch {
	case c.URL == "":
		return c, errors.New("no broker URL")
	case c.Version != 4 && c.Version != 5:
		return c, fmt.Errorf("MQTT version %d: use 4 (3.1.1) or 5", c.Version)
	case c.Publishers < 1 || c.Publishers > 0xffff:
		return c, fmt.Errorf("%d publishers: use 1 to 65535", c.Publishers)
	case c.Subscribers < 1:
		return c, fmt.Errorf("%d subscribers: use at least 1", c.Subscribers)
	case c.Scenario == ReqRep && c.Subscribers != 1:
		return c, fmt.Errorf("reqrep has one responder, not %d subscribers", c.Subscribers)
	case c.QoS > 1:
		return c, fmt.Errorf("QoS %d: use 0 or 1", c.QoS)
	case c.Size < 0 || c.Size > 256<<20:
		return c, fmt.Errorf("size %d: use 1 byte to 256 MiB", c.Size)
	case c.Rate < 0:
		return c, fmt.Errorf("rate %v: use 0 (flat out) or more", c.Rate)
	case c.Duration < 0 || c.Messages < 0 || c.Drain < 0:
		return c, errors.New("duration, messages and drain cannot be negative")
	case c.Inflight < 1 || c.Inflight > 0xffff:
		return c, fmt.Errorf("inflight %d: use 1 to 65535", c.Inflight)
	}
	for _, ch := range c.ClientPrefix + c.TopicPrefix {
		if ch <= ' ' || ch >= 0x7f || ch == '"' || ch == '\\' || ch == '+' || ch == '#' {
			return c, fmt.Errorf("prefixes %q and %q: use printable ASCII without quotes, backslashes, spaces, + or #", c.ClientPrefix, c.TopicPrefix)
		}
	}
	return c, nil
}

// orDefault sets *v to def if it is the zero value.
func orDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// run is one run's state.
type run struct {
	cfg      Config
	ep       endpoint
	base     time.Time // the clock's zero: times are ns since then
	wallBase int64     // base as Unix nanoseconds
	window   int       // QoS 1 window per publisher

	ctx    context.Context
	cancel context.CancelFunc

	conns []*conn
	pubs  []*publisher
	subs  []*receiver // subscribers; empty in reqrep
	resp  *responder  // reqrep

	refused atomic.Uint64
	stalled bool

	errMu   sync.Mutex
	err     error
	loops   sync.WaitGroup // read loops
	senders sync.WaitGroup // publishers' send loops
}

// now is the time since the run began, in nanoseconds.
func (r *run) now() int64 { return int64(time.Since(r.base)) }

// fail records the run's first error and stops it.
func (r *run) fail(err error) {
	if err == nil {
		return
	}
	r.errMu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.errMu.Unlock()
	r.cancel()
}

// Run connects the subscribers (or the responder), then the publishers, runs
// the scenario and returns what it measured. A connection error, a refused
// CONNACK or SUBACK, or a connection the broker ends during the run is an
// error naming the client.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return Result{}, fmt.Errorf("bench: %w", err)
	}
	ep, err := parseURL(cfg.URL)
	if err != nil {
		return Result{}, fmt.Errorf("bench: %w", err)
	}
	var id [3]byte
	_, _ = rand.Read(id[:])
	runID := hex.EncodeToString(id[:])
	r := &run{cfg: cfg, ep: ep, base: time.Now()}
	r.wallBase = r.base.UnixNano()
	r.ctx, r.cancel = context.WithCancel(ctx)
	defer r.cancel()
	conns, err := r.connect(cfg.ClientPrefix+"-"+runID, cfg.TopicPrefix+"/"+runID)
	if err == nil {
		r.measure()
	}
	// Closing the connections ends the read loops, and frees a publisher
	// blocked writing to a broker that stopped reading.
	r.cancel()
	for _, c := range conns {
		c.close()
	}
	r.senders.Wait()
	r.loops.Wait()
	if r.err != nil { // first: it may be why a later dial failed
		return Result{}, r.err
	}
	if err != nil {
		return Result{}, err
	}
	if ctx.Err() != nil {
		return Result{}, fmt.Errorf("bench interrupted: %w", context.Cause(ctx))
	}
	return r.result(), nil
}

// connect dials every client, receivers first, and starts their read loops.
// It returns the connections made, also on error.
func (r *run) connect(clientPrefix, topicPrefix string) ([]*conn, error) {
	cfg := r.cfg
	pl := newPlan(cfg.Scenario, topicPrefix)
	var conns []*conn
	dialOne := func(id string, recvMax uint16, filter string) (*conn, error) {
		c, err := dial(r.ctx, r.ep, cfg.Version, id, recvMax)
		if err != nil {
			return nil, err
		}
		conns = append(conns, c)
		r.conns = conns
		if filter != "" {
			if err := c.subscribe(filter, cfg.QoS); err != nil {
				return nil, err
			}
		}
		return c, nil
	}
	loop := func(c *conn, h handler) {
		r.loops.Add(1)
		go func() {
			defer r.loops.Done()
			r.fail(c.readLoop(h))
		}()
	}
	var respConn *conn
	for i := range cfg.Subscribers {
		c, err := dialOne(clientPrefix+"-s"+strconv.Itoa(i), cfg.ReceiveMaximum, pl.subFilter)
		if err != nil {
			return conns, fmt.Errorf("bench: %w", err)
		}
		if cfg.Scenario == ReqRep {
			respConn = c
			continue
		}
		s := newReceiver(r, c, cfg.Publishers)
		r.subs = append(r.subs, s)
		loop(c, s)
	}
	r.window = cfg.Inflight
	var repTopics []string
	for i := range cfg.Publishers {
		id := clientPrefix + "-p" + strconv.Itoa(i)
		var filter string
		var recvMax uint16
		if pl.repTopic != nil {
			filter, recvMax = pl.repTopic(i), cfg.ReceiveMaximum
			repTopics = append(repTopics, filter)
		}
		c, err := dialOne(id, recvMax, filter)
		if err != nil {
			return conns, fmt.Errorf("bench: %w", err)
		}
		r.window = min(r.window, int(c.recvMax))
		p, err := newPublisher(r, i, c, pl.pubTopic(i), min(cfg.Inflight, int(c.recvMax)))
		if err != nil {
			return conns, fmt.Errorf("bench: %w", err)
		}
		if filter != "" {
			p.replies = newReceiver(r, c, cfg.Publishers)
		}
		r.pubs = append(r.pubs, p)
		loop(c, p)
	}
	if respConn != nil {
		window := min(cfg.Publishers*cfg.Inflight, int(respConn.recvMax))
		resp, err := newResponder(r, respConn, repTopics, window)
		if err != nil {
			return conns, fmt.Errorf("bench: %w", err)
		}
		r.resp = resp
		loop(respConn, resp)
	}
	return conns, nil
}

// measure starts the publishers, then waits for the deliveries still due
// until they are all in or make no progress for Drain. The caller stops the
// publishers and waits for them.
func (r *run) measure() {
	var pubs sync.WaitGroup
	for _, p := range r.pubs {
		pubs.Add(1)
		r.senders.Add(1)
		go func() {
			defer r.senders.Done()
			defer pubs.Done()
			r.fail(p.send())
		}()
	}
	sending := make(chan struct{}) // nil once the publishers are done
	go func() { pubs.Wait(); close(sending) }()

	r.loops.Add(1)
	go r.ping()

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	const progressEvery = 250 * time.Millisecond
	done := false
	var last uint64
	lastChange, lastReport := time.Now(), time.Now()
	for {
		select {
		case <-tick.C:
		case <-sending:
			done, sending = true, nil
		case <-r.ctx.Done():
			return
		}
		sent, delivered, acked := r.counts()
		if p := sent + delivered + acked; p != last {
			last, lastChange = p, time.Now()
		}
		if r.cfg.Progress != nil && time.Since(lastReport) >= progressEvery {
			lastReport = time.Now()
			r.cfg.Progress(sent, delivered)
		}
		due := r.due(sent)
		outstanding := delivered < due || (r.cfg.QoS > 0 && acked < sent)
		if done && !outstanding {
			break
		}
		if outstanding && time.Since(lastChange) >= r.cfg.Drain {
			r.stalled = !done || r.cfg.QoS > 0
			break
		}
	}
	if r.cfg.Progress != nil {
		sent, delivered, _ := r.counts()
		r.cfg.Progress(sent, delivered)
	}
}

// endpoint is a parsed broker URL.
type endpoint struct {
	network, address   string
	username, password string
}

// parseURL reads unix:///path, tcp://host:port or mqtt://[user:pass@]host[:port].
func parseURL(raw string) (endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return endpoint{}, fmt.Errorf("broker URL %q: %w", raw, err)
	}
	var ep endpoint
	if u.User != nil {
		ep.username = u.User.Username()
		ep.password, _ = u.User.Password()
	}
	switch strings.ToLower(u.Scheme) {
	case "unix":
		if u.Path == "" {
			return endpoint{}, fmt.Errorf("broker URL %q has no socket path; write unix:///path/to.sock", u.Redacted())
		}
		ep.network, ep.address = "unix", u.Path
	case "tcp", "mqtt":
		if u.Hostname() == "" {
			return endpoint{}, fmt.Errorf("broker URL %q has no host", u.Redacted())
		}
		ep.network, ep.address = "tcp", u.Host
		if u.Port() == "" {
			ep.address = net.JoinHostPort(u.Hostname(), "1883")
		}
	default:
		return endpoint{}, fmt.Errorf("broker URL %q: scheme %q is not supported; use unix://, tcp:// or mqtt://", u.Redacted(), u.Scheme)
	}
	return ep, nil
}
