package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tarsmq/tarsmq/admin"
	"github.com/tarsmq/tarsmq/store"
)

// bindAdmin binds the admin listener, if configured.
func (b *Broker) bindAdmin() error {
	addr := b.cfg.Admin.Address
	if addr == "" {
		return nil
	}
	var ln net.Listener
	if strings.HasPrefix(addr, "/") {
		sock, err := listenUnix(addr, 0o660, -1, -1)
		if err != nil {
			return fmt.Errorf("listen on admin socket %s: %w", addr, err)
		}
		ln = closeHook{Listener: sock.ln, after: sock.Close}
		b.adminAddr = sock.path
	} else {
		tl, err := listenTCP("admin.address", addr)
		if err != nil {
			return err
		}
		ln = tl
		b.adminAddr = tl.Addr().String()
	}
	b.admin = &http.Server{
		Handler:           admin.Handler(healthSource{b}, admin.Options{SelfCheck: b.SelfCheck, Metrics: newRegistry(b), Clients: b.clients, Pprof: b.cfg.Admin.Pprof, Bridges: b.Bridges}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(b.log.Handler(), slog.LevelDebug),
	}
	b.adminLn = ln
	return nil
}

// clients lists the connected clients for /v1/clients.
func (b *Broker) clients() []admin.Client {
	var out []admin.Client
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Inline || cl.Closed() {
			continue
		}
		c := admin.Client{
			ID: cl.ID, Identity: string(cl.Properties.Username), Listener: cl.Net.Listener, Remote: cl.Net.Remote,
			Protocol: cl.Properties.ProtocolVersion, Subscriptions: cl.State.Subscriptions.Len(),
			Inflight: cl.State.Inflight.Len(), Dropped: b.flow.Dropped(cl.ID), Throttled: b.limits.ThrottledOf(cl.ID),
		}
		if peer, ok := b.peers.Peer(cl.Net.Conn); ok && peer.Cred != nil {
			c.UID, c.PID, c.Remote = &peer.Cred.UID, &peer.Cred.PID, ""
		}
		out = append(out, c)
	}
	return out
}

// serveAdmin serves the admin API on the listener bindAdmin bound.
func (b *Broker) serveAdmin() {
	if b.admin == nil {
		return
	}
	go func() {
		if err := b.admin.Serve(b.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.log.Error("admin listener stopped", "error", err)
		}
	}()
}

// AdminAddr is the admin listener's address or socket path ("" when off).
func (b *Broker) AdminAddr() string { return b.adminAddr }

// closeHook runs after when the listener closes (a Unix socket's cleanup).
type closeHook struct {
	net.Listener
	after func() error
}

func (c closeHook) Close() error { return c.after() }

// healthSource is what the admin API reads: the recorder's live view and
// the store.
type healthSource struct{ b *Broker }

func (h healthSource) Health() ([]store.HealthRecord, error) { return h.b.st.Health() }

func (h healthSource) History(source string, limit int) ([]store.HealthRecord, error) {
	return h.b.st.History(source, limit)
}

func (h healthSource) LastSeen() map[string]time.Time { return h.b.health.LastSeen() }
func (h healthSource) BootID() string                 { return h.b.health.BootID() }
func (h healthSource) Recovered() *store.Recovery     { return h.b.st.Recovered() }
