// Package broker runs the embedded MQTT 3.1.1/5.0 broker (mochi-mqtt) on a
// Unix socket, loopback TCP and optionally WebSocket. It owns the listeners,
// the broker's lifecycle and its flow control, so that mochi's faults under
// load (see package internal/flow) never reach a client.
//
// Lifecycle: New validates the Config, Start binds every listener before it
// returns, Close disconnects clients and may be called any number of times.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/hooks/contract"
	"github.com/tarsmq/tarsmq/internal/flow"
)

// sysTopicInterval is how often, in seconds, mochi refreshes $SYS topics;
// its default of one second keeps the CPU of an idle device awake.
const sysTopicInterval = 10

// Broker is the embedded MQTT broker.
type Broker struct {
	cfg      Config
	log      *slog.Logger
	srv      *mqtt.Server
	flow     *flow.Controller
	contract *contract.Hook

	started   atomic.Bool
	closing   atomic.Bool
	closed    chan struct{}
	closeErr  error
	listeners []*listener
	tcpAddr   net.Addr
	wsAddr    net.Addr
	sockPath  string
}

// New validates cfg and builds a broker that logs to log. It binds nothing
// until Start.
func New(cfg Config, log *slog.Logger) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid broker config:\n%w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumMessageExpiryInterval = 0 // retained messages and sessions' messages never expire unless the publisher says so
	caps.MaximumPacketSize = uint32(cfg.Limits.MaxPacketSize)
	caps.MaximumInflight = uint16(cfg.Limits.MaxSessionMessages)
	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		// mochi would gather packets in a buffer of its own before writing
		// them, out of flow control's sight; with a size of 1 it writes each
		// at once, and flow.Conn batches them into one write per wake-up.
		ClientNetWriteBufferSize: 1,
		Logger:                   newMochiLogger(log.With("component", "mqtt")),
		SysTopicResendInterval:   sysTopicInterval,
		InlineClient:             true, // the broker's own messages (contract rejections)
	})
	b := &Broker{
		cfg:      cfg,
		log:      log,
		srv:      srv,
		flow:     flow.New(srv, log.With("component", "flow")),
		contract: contract.New(log.With("component", "contract"), srv),
		closed:   make(chan struct{}),
	}
	// Anyone who can reach a listener may connect, publish and subscribe:
	// the listeners are local by default.
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, fmt.Errorf("add auth hook: %w", err)
	}
	// The contract comes before flow control, so an invalid message is
	// refused before its publisher waits for room.
	if err := srv.AddHook(b.contract, cfg.Contract); err != nil {
		return nil, fmt.Errorf("add contract hook: %w", err)
	}
	s := cfg.SlowSubscriber
	if err := srv.AddHook(b.flow, flow.Config{
		MaxInflight:   cfg.Limits.MaxInflight,
		QueueMessages: cfg.Limits.MaxQueuedMessages,
		QueueBytes:    int64(cfg.Limits.MaxQueuedBytes),
		Policy:        flow.Policy(s.Policy),
		BlockTimeout:  s.BlockTimeout,
		WriteTimeout:  s.WriteTimeout,
	}); err != nil {
		return nil, fmt.Errorf("add flow control hook: %w", err)
	}
	return b, nil
}

// AddHook attaches a mochi hook (contract checks, storage, ...) with its
// config. Call it before Start.
func (b *Broker) AddHook(h mqtt.Hook, config any) error {
	if b.started.Load() {
		return errors.New("broker: AddHook after Start")
	}
	return b.srv.AddHook(h, config)
}

// Start binds every configured listener, then serves them in the background.
// When it returns nil, Addr, SocketPath and WebSocketAddr are usable.
func (b *Broker) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.closing.Load() {
		return errors.New("broker: Start after Close")
	}
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("broker: already started")
	}
	if err := b.bind(); err != nil {
		b.closeListeners()
		return err
	}
	for _, l := range b.listeners {
		if err := b.srv.AddListener(l); err != nil {
			b.closeListeners()
			return fmt.Errorf("add listener %s: %w", l.id, err)
		}
	}
	if err := b.srv.Serve(); err != nil {
		b.closeListeners()
		return fmt.Errorf("serve: %w", err)
	}
	for _, l := range b.listeners {
		b.log.Info("listening", "listener", l.id, "address", l.Address())
	}
	return nil
}

// bind opens the listeners in b.cfg. On error, those already bound are in
// b.listeners for the caller to close.
func (b *Broker) bind() error {
	lc := b.cfg.Listeners
	wrap := func(c net.Conn) net.Conn { return b.flow.Wrap(c) }
	add := func(id string, ln net.Listener) *listener {
		l := &listener{id: id, ln: ln, wrap: wrap, shutdown: b.disconnect, log: b.log, conns: map[net.Conn]struct{}{}}
		b.listeners = append(b.listeners, l)
		return l
	}
	if lc.Unix.Path != "" {
		mode, _ := ParseMode(lc.Unix.Mode) // validated
		gid := -1
		if lc.Unix.Group != "" {
			g, err := lookupGroup(lc.Unix.Group)
			if err != nil {
				return fmt.Errorf("listeners.unix.group: %w", err)
			}
			gid = g
		}
		sock, err := listenUnix(lc.Unix.Path, mode, gid)
		if err != nil {
			return fmt.Errorf("listen on unix socket %s: %w", lc.Unix.Path, err)
		}
		l := add("unix", sock.ln)
		l.addr, l.cleanup = sock.path, sock.Close
		b.sockPath = sock.path
	}
	if lc.TCP.Address != "" {
		ln, err := listenTCP("listeners.tcp.address", lc.TCP.Address)
		if err != nil {
			return err
		}
		add("tcp", ln)
		b.tcpAddr = ln.Addr()
	}
	if lc.WebSocket.Address != "" {
		ln, err := listenTCP("listeners.websocket.address", lc.WebSocket.Address)
		if err != nil {
			return err
		}
		ws := newWebSocketServer(lc.WebSocket.AllowedOrigins, b.log)
		l := add("ws", ln)
		l.serve = func(establish func(net.Conn)) { ws.serve(ln, establish) }
		l.cleanup = ws.close
		b.wsAddr = ln.Addr()
	}
	return nil
}

// disconnect ends one connection at shutdown: a logged-in client gets
// DISCONNECT 0x8B (server shutting down) first.
func (b *Broker) disconnect(c net.Conn) {
	if fc, ok := c.(*flow.Conn); ok {
		if cl := fc.Client(); cl != nil {
			_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
			return
		}
	}
	_ = c.Close()
}

// listenTCP binds addr, the value of the config key field.
func listenTCP(field, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("listen on %s: %w; another program (another MQTT broker?) uses the port: stop it or change %s", addr, err, field)
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s (%s): %w", addr, field, err)
	}
	return ln, nil
}

// closeListeners closes listeners bound by a Start that failed.
func (b *Broker) closeListeners() {
	for _, l := range b.listeners {
		l.Close(func(string) {})
	}
	b.listeners = nil
}

// Addr is the TCP listener's address (nil when TCP is off or before Start).
func (b *Broker) Addr() net.Addr { return b.tcpAddr }

// WebSocketAddr is the WebSocket listener's address (nil when off).
func (b *Broker) WebSocketAddr() net.Addr { return b.wsAddr }

// SocketPath is the Unix socket's path ("" when off or before Start).
func (b *Broker) SocketPath() string { return b.sockPath }

// Connections is how many network connections the broker holds, including
// those that have not finished CONNECT.
func (b *Broker) Connections() int {
	n := 0
	for _, l := range b.listeners {
		n += l.open()
	}
	return n
}

// Server is the underlying mochi server, for hooks that need it.
func (b *Broker) Server() *mqtt.Server { return b.srv }

// Contract is the envelope contract hook, for its rejection counts.
func (b *Broker) Contract() *contract.Hook { return b.contract }

// Dropped is how many messages for clientID the slow subscriber policy has
// dropped since the broker started.
func (b *Broker) Dropped(clientID string) uint64 { return b.flow.Dropped(clientID) }

// DroppedTotal is how many messages were dropped for all clients.
func (b *Broker) DroppedTotal() uint64 { return b.flow.DroppedTotal() }

// Close disconnects every client (MQTT 5 clients get DISCONNECT 0x8B "server
// shutting down"), stops the hooks, closes the listeners and removes the
// socket file. It may be called more than once and concurrently; every call
// returns the first error of the first. If ctx ends first, Close returns
// ctx's error and shutdown goes on in the background.
func (b *Broker) Close(ctx context.Context) error {
	if b.closing.CompareAndSwap(false, true) {
		go b.shutdown()
	}
	select {
	case <-b.closed:
		return b.closeErr
	case <-ctx.Done():
		return fmt.Errorf("close broker: %w (clients still disconnecting)", ctx.Err())
	}
}

func (b *Broker) shutdown() {
	defer close(b.closed)
	var errs []error
	if err := b.srv.Close(); err != nil { // closes listeners and clients, stops hooks
		errs = append(errs, err)
	}
	if b.started.Load() {
		for _, l := range b.listeners {
			if l.closeErr != nil {
				errs = append(errs, fmt.Errorf("close %s listener: %w", l.id, l.closeErr))
			}
		}
	}
	if err := b.flow.Stop(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		b.closeErr = errs[0]
		for _, e := range errs[1:] {
			b.log.Warn("close", "error", e)
		}
	}
	b.log.Info("broker stopped")
}
