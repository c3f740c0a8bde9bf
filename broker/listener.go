package broker

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/hooks/auth"
	"github.com/tarsmq/tarsmq/internal/flow"
	"github.com/tarsmq/tarsmq/internal/peercred"
)

// connectTimeout is how long a new connection may take to send CONNECT.
// mochi sets no deadline before CONNECT, so a silent connection would hold a
// goroutine for ever and make Server.Close wait for it.
const connectTimeout = 10 * time.Second

// listener is a bound net.Listener served to mochi (it implements
// listeners.Listener). It puts every accepted connection under flow control,
// keeps serving through temporary accept errors such as EMFILE, and on Close
// also closes connections that never finished CONNECT, which mochi does not
// know about.
type listener struct {
	id       string // mochi listener id, also the protocol name
	ln       net.Listener
	addr     string // what Address reports, if not ln's address
	wrap     func(net.Conn) net.Conn
	local    bool                                   // the Unix socket, or bound to a loopback address
	peers    *peers                                 // every open connection, for auth
	maxConns int                                    // open connections the broker holds at most
	cred     func(net.Conn) (*peercred.Cred, error) // a Unix socket peer's credentials
	log      *slog.Logger
	serve    func(establish func(net.Conn)) // how connections arrive; nil: Accept
	shutdown func(net.Conn)                 // ends one connection at Close
	cleanup  func() error                   // after the listener closed
	closing  atomic.Bool
	closeErr error

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Init does nothing: the listener was bound before mochi saw it.
func (l *listener) Init(*slog.Logger) error { return nil }

// ID is the mochi listener id.
func (l *listener) ID() string { return l.id }

// Address is the bound address, with the real port when 0 was asked for.
func (l *listener) Address() string {
	if l.addr != "" {
		return l.addr
	}
	return l.ln.Addr().String()
}

// Protocol is the listener's protocol name.
func (l *listener) Protocol() string { return l.id }

// Serve accepts connections until Close and hands each to mochi.
func (l *listener) Serve(establish listeners.EstablishFn) {
	handle := func(c net.Conn) {
		peer := auth.Peer{Listener: l.id, Local: l.local}
		if l.id == "unix" {
			cred, err := l.cred(c)
			if err != nil {
				l.log.Warn("cannot read the credentials of a Unix socket peer; connection closed", "error", err)
				_ = c.Close()
				return
			}
			peer.Cred = cred
		}
		_ = c.SetReadDeadline(time.Now().Add(connectTimeout))
		fc := l.wrap(c)
		if !l.track(fc) {
			_ = fc.Close()
			return
		}
		defer l.untrack(fc)
		if !l.peers.add(fc, peer, l.maxConns) {
			l.log.Debug("too many connections; closed a new one at once", "listener", l.id, "limit", l.maxConns)
			_ = fc.Close()
			return
		}
		defer l.peers.remove(fc)
		if err := establish(l.id, fc); err != nil && !isDisconnect(err) {
			l.log.Debug("client connection ended", "listener", l.id, "remote", c.RemoteAddr().String(), "error", err)
		}
	}
	if l.serve != nil {
		l.serve(handle)
		return
	}
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Error("accept failed; retrying", "listener", l.id, "error", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		go handle(c)
	}
}

func (l *listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing.Load() {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

// open is how many connections the listener holds.
func (l *listener) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// Close stops accepting and ends every connection: logged-in clients get a
// DISCONNECT (see Broker.bind). It does not call mochi's closeClients, which
// takes the clients' read lock twice (Clients.GetByListener calls Len) and
// deadlocks against clients disconnecting at the same moment.
func (l *listener) Close(listeners.CloseFn) {
	if !l.closing.CompareAndSwap(false, true) {
		return
	}
	err := l.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	l.mu.Lock()
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		l.shutdown(c)
	}
	if l.cleanup != nil {
		err = errors.Join(err, l.cleanup())
	}
	l.closeErr = err
}

// isDisconnect reports errors that only say the client went away.
func isDisconnect(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF)
}

// bind opens the listeners in b.cfg. On error, those already bound are in
// b.listeners for the caller to close.
func (b *Broker) bind() error {
	lc := b.cfg.Listeners
	wrap := func(c net.Conn) net.Conn { return b.flow.Wrap(c) }
	add := func(id string, ln net.Listener) *listener {
		local := true
		if a, ok := ln.Addr().(*net.TCPAddr); ok {
			local = a.IP.IsLoopback()
		}
		l := &listener{id: id, ln: ln, wrap: wrap, local: local, peers: &b.peers, cred: b.peerCred,
			maxConns: b.cfg.Limits.MaxClients + pendingConnects,
			shutdown: b.disconnect, log: b.log, conns: map[net.Conn]struct{}{}}
		b.listeners = append(b.listeners, l)
		return l
	}
	if lc.Unix.Path != "" {
		mode, _ := ParseMode(lc.Unix.Mode) // validated
		uid, gid := -1, -1
		if lc.Unix.Owner != "" {
			u, err := lookupUser(lc.Unix.Owner)
			if err != nil {
				return fmt.Errorf("listeners.unix.owner: %w", err)
			}
			uid = u
		}
		if lc.Unix.Group != "" {
			g, err := lookupGroup(lc.Unix.Group)
			if err != nil {
				return fmt.Errorf("listeners.unix.group: %w", err)
			}
			gid = g
		}
		sock, err := listenUnix(lc.Unix.Path, mode, uid, gid)
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
		l := add("tcp", ln)
		b.tcpAddr = ln.Addr()
		if lc.TCP.TLSCertFile != "" {
			c, err := newCerts(lc.TCP.TLSCertFile, lc.TCP.TLSKeyFile)
			if err != nil {
				return fmt.Errorf("listeners.tcp: %w", err)
			}
			b.certs = c
			l.ln = c.listener(ln)
		}
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
