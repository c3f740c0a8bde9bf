// Package broker runs the embedded MQTT 3.1.1/5.0 broker (mochi-mqtt) on a
// Unix socket, loopback TCP and optionally WebSocket, with everything that
// stands around it: flow control (so mochi's faults under load, see package
// internal/flow, never reach a client), the envelope contract, the store
// that keeps retained messages, sessions and health across restarts, the
// health recorder, and the admin HTTP API.
//
// Lifecycle: New validates the Config, Start opens the store and binds every
// listener before it returns, Close disconnects clients and may be called
// any number of times.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/bridge"
	"github.com/tarsmq/tarsmq/hooks/auth"
	"github.com/tarsmq/tarsmq/hooks/contract"
	"github.com/tarsmq/tarsmq/hooks/health"
	"github.com/tarsmq/tarsmq/hooks/limits"
	"github.com/tarsmq/tarsmq/hooks/persist"
	"github.com/tarsmq/tarsmq/internal/bootid"
	"github.com/tarsmq/tarsmq/internal/flow"
	"github.com/tarsmq/tarsmq/internal/peercred"
	"github.com/tarsmq/tarsmq/internal/userdb"
	"github.com/tarsmq/tarsmq/store"
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
	bridges  []*bridge.Bridge
	auth     *auth.Hook
	limits   *limits.Hook
	peers    peers
	peerCred func(net.Conn) (*peercred.Cred, error)
	userDB   string
	certs    *certs // the TCP listener's, when it serves TLS
	st       *store.Store
	persist  *persist.Hook
	health   *health.Hook
	bootID   func() string

	check     selfCheck
	admin     *http.Server
	adminLn   net.Listener
	adminAddr string

	started   atomic.Bool
	closing   atomic.Bool
	closed    chan struct{}
	closeErr  error
	listeners []*listener
	tcpAddr   net.Addr
	wsAddr    net.Addr
	sockPath  string
}

// Option changes how New builds a broker.
type Option func(*Broker)

// WithBootID replaces the boot id source (/proc/sys/kernel/random/boot_id),
// for tests.
func WithBootID(f func() string) Option { return func(b *Broker) { b.bootID = f } }

// WithUserDB sets systemd's dynamic user database socket, which names the
// uids of DynamicUser= services (default: userdb.DynamicUserSocket; "" off).
func WithUserDB(path string) Option { return func(b *Broker) { b.userDB = path } }

// WithPeerCred replaces how a Unix socket peer's credentials are read
// (SO_PEERCRED), for tests that play several users.
func WithPeerCred(f func(net.Conn) (*peercred.Cred, error)) Option {
	return func(b *Broker) { b.peerCred = f }
}

// The outbound channel of each client, and the part of it publishers past
// the flow control gate at the same moment may still fill.
const (
	outboundChannel = 128
	outboundSlack   = 32
)

// Health recorder timing.
const (
	lastSeenFlush = 5 * time.Second // heartbeats' last-seen times wait this long in memory at most
	offlineGrace  = time.Second     // a client back within this is not marked offline
)

// New validates cfg and builds a broker that logs to log. It opens and binds
// nothing until Start.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Broker, error) {
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
	// mochi's outbound channel per client (8192 slots, 64 KiB, by default)
	// only hands packets to flow.Conn, whose queue flow control bounds.
	// Flow control counts a client full before the channel is, so mochi
	// never drops from it; a small channel bounds what a client costs, and
	// what a broker short of CPU holds, however many subscribers wait.
	caps.MaximumClientWritesPending = outboundChannel
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
		st:       store.New(cfg.Store, log.With("component", "store")),
		limits:   limits.New(srv, log.With("component", "limits")),
		peerCred: readCred,
		userDB:   userdb.DynamicUserSocket,
		bootID:   bootid.Read,
		closed:   make(chan struct{}),
	}
	for _, o := range opts {
		o(b)
	}
	b.auth = auth.New(log.With("component", "auth"), auth.Options{
		Server: srv, Conns: &b.peers, MaxClients: cfg.Limits.MaxClients, Networked: cfg.networked(), UserDB: b.userDB,
	})
	b.persist = persist.New(b.st, log.With("component", "persist"))
	b.health = health.New(b.st, srv, log.With("component", "health"))
	// Who may connect and what they may do comes first, then the limits,
	// so a client is refused for what it is not allowed before what it
	// sends is checked.
	if err := srv.AddHook(b.auth, cfg.Auth); err != nil {
		return nil, fmt.Errorf("add auth hook: %w", err)
	}
	lim := cfg.Limits
	if err := srv.AddHook(b.limits, limits.Config{
		PublishRate: lim.PublishRate, PublishBurst: lim.PublishBurst,
		MaxTopicLength: lim.MaxTopicLength, MaxTopicLevels: lim.MaxTopicLevels,
		MaxRetainedMessages: lim.MaxRetained, MaxRetainedBytes: int64(lim.MaxRetainedBytes),
	}); err != nil {
		return nil, fmt.Errorf("add limits hook: %w", err)
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
		TotalBytes:    int64(cfg.Limits.MaxQueuedTotal),
		OutboundLimit: outboundChannel - outboundSlack,
		Policy:        flow.Policy(s.Policy),
		BlockTimeout:  s.BlockTimeout,
		WriteTimeout:  s.WriteTimeout,
	}); err != nil {
		return nil, fmt.Errorf("add flow control hook: %w", err)
	}
	b.flow.OnDropInflight = b.persist.DeleteInflight
	b.flow.OnAdoptInflight = func(cl *mqtt.Client, oldID uint16, pk packets.Packet) {
		if _, ok := cl.State.Inflight.Get(oldID); !ok {
			b.persist.DeleteInflight(cl, oldID)
		}
		b.persist.OnQosPublish(cl, pk, pk.Created, 0)
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

// Start opens the store, binds every configured listener, restores what the
// store kept, then serves in the background. When it returns nil, Addr,
// SocketPath, WebSocketAddr and AdminAddr are usable.
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
	err := b.start()
	if b.st.Opened() {
		if eerr := b.st.EndStart(); eerr != nil { // a start that returns is no crash
			b.log.Warn("store: cannot clear the start marker", "error", eerr)
		}
	}
	if err != nil {
		b.closeListeners()
		if b.admin != nil {
			_ = b.admin.Close()
		}
		return err
	}
	for _, l := range b.listeners {
		b.log.Info("listening", "listener", l.id, "address", l.Address())
	}
	if b.adminAddr != "" {
		b.log.Info("listening", "listener", "admin", "address", b.adminAddr)
	}
	if r := b.st.Recovered(); r != nil && time.Since(r.At) < time.Minute {
		b.log.Error("started with an empty store: the damaged one was kept", "kept_at", r.MovedTo, "reason", r.Reason)
	}
	return nil
}

func (b *Broker) start() error {
	if err := b.st.Open(); err != nil {
		return err
	}
	if err := b.srv.AddHook(b.persist, nil); err != nil {
		return fmt.Errorf("add persist hook: %w", err)
	}
	b.warnUnknownIdentities(b.cfg.Auth)
	if b.bootID() == bootid.Unknown {
		b.log.Warn("cannot read the boot id ("+bootid.Path+"): health records will not tell this boot from earlier ones",
			"hint", "under systemd, ProcSubset=pid hides /proc/sys")
	}
	if err := b.srv.AddHook(b.health, health.Config{FlushInterval: lastSeenFlush, OfflineGrace: offlineGrace, BootID: b.bootID}); err != nil {
		return fmt.Errorf("add health hook: %w", err)
	}
	if err := b.addBridges(); err != nil {
		return err
	}
	if err := b.bind(); err != nil {
		return err
	}
	if err := b.bindAdmin(); err != nil {
		return err
	}
	for _, l := range b.listeners {
		if err := b.srv.AddListener(l); err != nil {
			return fmt.Errorf("add listener %s: %w", l.id, err)
		}
	}
	if err := b.srv.Serve(); err != nil { // restores the store's state, then serves
		return fmt.Errorf("serve: %w", err)
	}
	persist.RestoreExpiry(b.srv)
	b.limits.CountRetained(b.srv.Topics.Retained.GetAll())
	for _, br := range b.bridges {
		if err := br.Start(); err != nil {
			return err
		}
	}
	if err := b.check.subscribe(b.srv); err != nil {
		return fmt.Errorf("self-check subscription: %w", err)
	}
	b.serveAdmin()
	return nil
}

// addBridges builds the configured bridges and the hook that feeds them,
// after every hook that may refuse a message: a bridge queues only what
// the broker accepts.
func (b *Broker) addBridges() error {
	id, err := bridge.BrokerID(b.st)
	if err != nil {
		return err
	}
	device := b.cfg.Device()
	for _, bc := range b.cfg.Bridges {
		br, err := bridge.New(bc.Defaults(device), bridge.Deps{
			Server: b.srv, Store: b.st, Log: b.log.With("component", "bridge"),
			BrokerID: id, DeviceID: device, Check: b.contract.CheckMessage,
		})
		if err != nil {
			return err
		}
		b.bridges = append(b.bridges, br)
	}
	if err := b.srv.AddHook(bridge.NewHook(id, uint32(b.cfg.Limits.MaxPacketSize), b.bridges, b.log.With("component", "bridge")), nil); err != nil {
		return fmt.Errorf("add bridge hook: %w", err)
	}
	return nil
}

// Bridges reports the state of each bridge.
func (b *Broker) Bridges() []bridge.State {
	out := make([]bridge.State, 0, len(b.bridges))
	for _, br := range b.bridges {
		out = append(out, br.State())
	}
	return out
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

// Auth is the auth hook, for its refusal and denial counts.
func (b *Broker) Auth() *auth.Hook { return b.auth }

// Limits is the limits hook, for what it counted.
func (b *Broker) Limits() *limits.Hook { return b.limits }

// Contract is the envelope contract hook, for its rejection counts.
func (b *Broker) Contract() *contract.Hook { return b.contract }

// Store is the broker's database.
func (b *Broker) Store() *store.Store { return b.st }

// Health is the health recorder.
func (b *Broker) Health() *health.Hook { return b.health }

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
	b.health.Shutdown() // the disconnects that follow are not services dying
	for _, br := range b.bridges {
		br.Close() // their queues stay in the store; what is published meanwhile joins them
	}
	if err := b.srv.Close(); err != nil { // closes listeners and clients, stops hooks
		errs = append(errs, err)
	}
	if b.admin != nil {
		if err := b.admin.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close admin listener: %w", err))
		}
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.st.Close(ctx); err != nil {
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
