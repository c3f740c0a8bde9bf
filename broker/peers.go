package broker

import (
	"net"
	"sync"
	"sync/atomic"

	"github.com/tarsmq/tarsmq/hooks/auth"
	"github.com/tarsmq/tarsmq/internal/peercred"
)

// pendingConnects is how many connections may wait to finish CONNECT on top
// of limits.max_clients; beyond that new connections are closed at once, so
// a flood of silent connections cannot hold unbounded memory.
const pendingConnects = 64

// peers knows every open client connection: the listener it came in on, its
// Unix socket credentials, and whether it counts as a connected client.
type peers struct {
	conns    sync.Map // net.Conn -> *peerEntry
	open     atomic.Int64
	admitted atomic.Int64
}

type peerEntry struct {
	auth.Peer
	admitted atomic.Bool
}

// add registers c unless the broker already holds limit connections.
func (p *peers) add(c net.Conn, peer auth.Peer, limit int) bool {
	if n := p.open.Add(1); limit > 0 && n > int64(limit) {
		p.open.Add(-1)
		return false
	}
	p.conns.Store(c, &peerEntry{Peer: peer})
	return true
}

// remove forgets c, and its place among connected clients.
func (p *peers) remove(c net.Conn) {
	v, ok := p.conns.LoadAndDelete(c)
	if !ok {
		return
	}
	p.open.Add(-1)
	if v.(*peerEntry).admitted.Load() {
		p.admitted.Add(-1)
	}
}

// Peer implements auth.Conns.
func (p *peers) Peer(c net.Conn) (auth.Peer, bool) {
	v, ok := p.conns.Load(c)
	if !ok {
		return auth.Peer{}, false
	}
	return v.(*peerEntry).Peer, true
}

// Admit implements auth.Conns.
func (p *peers) Admit(c net.Conn, max int) bool {
	v, ok := p.conns.Load(c)
	if !ok {
		return false
	}
	e := v.(*peerEntry)
	for {
		n := p.admitted.Load()
		if max > 0 && n >= int64(max) {
			return false
		}
		if p.admitted.CompareAndSwap(n, n+1) {
			e.admitted.Store(true)
			return true
		}
	}
}

// readCred reads a Unix socket peer's credentials.
func readCred(c net.Conn) (*peercred.Cred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil
	}
	cred, err := peercred.Read(uc)
	if err != nil {
		return nil, err
	}
	return &cred, nil
}
