// Package auth is the broker hook that decides who may connect, as whom,
// and what each client may publish and read.
//
// A client's identity comes from the kernel on the Unix socket
// (auth.socket: peercred; the uid and groups of the connecting process,
// mapped by auth.identities, whatever username it claims), from the
// password file, or is empty for an anonymous client, which is only ever
// accepted on a local listener. The identity replaces the username the
// client sent, so the ACL's %u, the contract's source binding and the
// health records all see who the client really is.
//
// Refusals carry a reason: MQTT 5 clients get the CONNACK reason code with
// a reason string, a publish the ACL denies gets PUBACK 0x87 (MQTT 3.1.1
// and QoS 0 publishers are acknowledged and their message dropped), and a
// denied subscription SUBACK 0x87. Every refusal and denial is counted and
// logged, rate-limited.
package auth

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/xid"

	"github.com/tarsmq/tarsmq/internal/acl"
	"github.com/tarsmq/tarsmq/internal/lograte"
	"github.com/tarsmq/tarsmq/internal/peercred"
	"github.com/tarsmq/tarsmq/internal/reject"
)

// Peer is what the broker knows about a client's connection.
type Peer struct {
	Listener string         // "unix", "tcp" or "ws"
	Local    bool           // the Unix socket, or a listener bound to a loopback address
	Cred     *peercred.Cred // the process at the other end of the Unix socket; nil elsewhere
}

// Conns is the broker's view of its connections.
type Conns interface {
	// Peer describes the connection c.
	Peer(c net.Conn) (Peer, bool)
	// Admit counts c as a connected client unless max are already
	// connected (0: no limit), and reports whether it did. The count drops
	// when c closes.
	Admit(c net.Conn, max int) bool
}

// Options are what the hook needs from the broker.
type Options struct {
	Server *mqtt.Server
	Conns  Conns
	// MaxClients bounds connected clients (limits.max_clients; 0: none).
	MaxClients int
	// Networked says a listener is bound beyond loopback: then
	// allow_anonymous: auto means false.
	Networked bool
	// UserDB is systemd's dynamic user database socket, to name the uids
	// of DynamicUser= services; "" turns it off.
	UserDB string
}

// Reasons a connection is refused, as counted.
const (
	RefusedMaxClients = "max_clients"
	RefusedPassword   = "bad_credentials"
	RefusedAnonymous  = "anonymous"
	RefusedUnknownUID = "unknown_peer"
	RefusedClientID   = "client_id"
	RefusedWill       = "will_denied"
)

// Hook authenticates clients and enforces the ACL. Create it with New and
// add it with Server.AddHook(hook, Config{...}).
type Hook struct {
	mqtt.HookBase
	opts    Options
	policy  atomic.Pointer[policy]
	limiter *lograte.Limiter
	counts  counters
}

// New returns a Hook logging to log.
func New(log *slog.Logger, opts Options) *Hook {
	h := &Hook{opts: opts, limiter: lograte.New(10 * time.Second)}
	h.Log = log
	h.counts.init()
	return h
}

// ID names the hook.
func (h *Hook) ID() string { return "auth" }

// authEvents are the events the hook handles.
var authEvents = []byte{
	mqtt.OnConnect,
	mqtt.OnConnectAuthenticate,
	mqtt.OnACLCheck,
	mqtt.OnPublish,
	mqtt.OnSubscribe,
}

// Provides says whether the hook handles event b.
func (h *Hook) Provides(b byte) bool { return bytes.IndexByte(authEvents, b) >= 0 }

// SetOpts keeps the hook's own logger rather than mochi's.
func (h *Hook) SetOpts(_ *slog.Logger, opts *mqtt.HookOptions) { h.Opts = opts }

// Init takes the hook's Config.
func (h *Hook) Init(config any) error {
	cfg, ok := config.(Config)
	if !ok {
		return fmt.Errorf("auth: %w: want auth.Config, got %T", mqtt.ErrInvalidConfigType, config)
	}
	if h.opts.Server == nil || h.opts.Conns == nil {
		return fmt.Errorf("auth: the hook needs Options.Server and Options.Conns")
	}
	return h.Reload(cfg)
}

// Reload swaps in a new configuration (identities, password file, ACL)
// while clients stay connected: clients connecting from now on are checked
// against it, and so is every publish, subscription and delivery. On error
// the old one stays.
func (h *Hook) Reload(cfg Config) error {
	p, err := cfg.compile()
	if err != nil {
		return err
	}
	h.policy.Store(p)
	return nil
}

// Config returns the configuration in force.
func (h *Hook) Config() Config { return h.policy.Load().cfg }

// OnConnect admits a client, or refuses it with a CONNACK that says why.
func (h *Hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if cl.Net.Inline {
		return nil
	}
	peer, _ := h.opts.Conns.Peer(cl.Net.Conn)
	if !h.opts.Conns.Admit(cl.Net.Conn, h.opts.MaxClients) {
		return h.refuse(cl, peer, RefusedMaxClients, packets.ErrQuotaExceeded, packets.Err3ServerUnavailable,
			fmt.Sprintf("the broker has its maximum of %d clients (limits.max_clients)", h.opts.MaxClients))
	}
	p := h.policy.Load()
	var identity string
	switch {
	case peer.Cred != nil && p.cfg.Socket == SocketPeerCred:
		name, ids, ok := p.resolve(*peer.Cred, func(uid uint32) string { return UserName(uid, h.opts.UserDB) })
		if !ok {
			return h.refuse(cl, peer, RefusedUnknownUID, packets.ErrNotAuthorized, packets.Err3NotAuthorized,
				fmt.Sprintf("uid %d (pid %d) is not mapped to an identity (auth.identities)", peer.Cred.UID, peer.Cred.PID))
		}
		if pk.Connect.ClientIdentifier == "" { // mochi gave it a random id
			cl.ID = name + ":" + xid.New().String()
			if cl.Properties.ProtocolVersion == 5 {
				cl.Properties.Props.AssignedClientID = cl.ID
			}
		} else if !anyMatch(ids, cl.ID) {
			return h.refuse(cl, peer, RefusedClientID, packets.ErrClientIdentifierNotValid, packets.Err3ClientIdentifierNotValid,
				fmt.Sprintf("client id %q is not one of %s's (%s)", cl.ID, name, strings.Join(ids, ", ")))
		}
		identity = name
	case len(pk.Connect.Username) > 0 && p.passwords != nil:
		if !p.passwords.Verify(string(pk.Connect.Username), string(pk.Connect.Password)) {
			return h.refuse(cl, peer, RefusedPassword, packets.ErrBadUsernameOrPassword, packets.ErrMalformedUsernameOrPassword,
				"bad username or password")
		}
		identity = string(pk.Connect.Username)
	case !peer.Local || !p.cfg.AllowAnonymous.Resolve(!h.opts.Networked):
		why := "anonymous clients are not allowed (auth.allow_anonymous): connect with a username and password"
		if !peer.Local {
			why = "anonymous clients are never allowed on a listener bound beyond loopback: connect with a username and password"
		}
		if len(pk.Connect.Username) > 0 {
			why = "no password file is configured (auth.password_file), and " + why
		}
		return h.refuse(cl, peer, RefusedAnonymous, packets.ErrNotAuthorized, packets.Err3NotAuthorized, why)
	}
	// An unverified username means nothing: the identity replaces it.
	cl.Properties.Username = []byte(identity)
	if pk.Connect.WillFlag && !p.acl.CanWrite(acl.Who{Identity: identity, ClientID: cl.ID}, pk.Connect.WillTopic) {
		return h.refuse(cl, peer, RefusedWill, packets.ErrNotAuthorized, packets.Err3NotAuthorized,
			fmt.Sprintf("the will topic %q is not one this client may publish to (auth.acl)", pk.Connect.WillTopic))
	}
	return nil
}

// refuse sends the CONNACK refusal (to MQTT 5 the v5 code with why as its
// reason string, to 3.1.1 the v3 return code: mochi's own mapping misses
// most codes), counts and logs it, and returns the error that makes mochi
// close the connection.
func (h *Hook) refuse(cl *mqtt.Client, peer Peer, reason string, v5, v3 packets.Code, why string) error {
	h.counts.refused(reason)
	code := v3
	if cl.Properties.ProtocolVersion == 5 {
		code = packets.Code{Code: v5.Code, Reason: reject.Truncate(why, reject.MaxReasonLen)}
	}
	_ = h.opts.Server.SendConnack(cl, code, false, nil)
	if suppressed, ok := h.limiter.Allow("connect\x00"+reason, time.Now()); ok {
		args := []any{"client", cl.ID, "listener", peer.Listener, "remote", cl.Net.Remote, "reason", why}
		if peer.Cred != nil {
			args = append(args, "uid", peer.Cred.UID, "pid", peer.Cred.PID)
		}
		if suppressed > 0 {
			args = append(args, "suppressed", suppressed)
		}
		h.Log.Warn("connection refused", args...)
	}
	return v5
}

// OnConnectAuthenticate lets through every client OnConnect admitted.
func (h *Hook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnACLCheck answers mochi for subscriptions (a filter) and deliveries (a
// topic); publishes are checked in OnPublish, which can say why.
func (h *Hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if write || cl.Net.Inline {
		return true
	}
	a := h.policy.Load().acl
	who := acl.Who{Identity: string(cl.Properties.Username), ClientID: cl.ID}
	if strings.ContainsAny(topic, "+#") {
		return a.CanSubscribe(who, topic)
	}
	return a.CanRead(who, topic)
}

// OnSubscribe counts and logs the filters the ACL will refuse (mochi
// answers them with SUBACK 0x87).
func (h *Hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	a := h.policy.Load().acl
	who := acl.Who{Identity: string(cl.Properties.Username), ClientID: cl.ID}
	for _, f := range pk.Filters {
		if !a.CanSubscribe(who, f.Filter) {
			h.denied(cl, "subscribe", f.Filter)
		}
	}
	return pk
}

// OnPublish refuses a publish the ACL denies: PUBACK/PUBREC 0x87 with a
// reason for MQTT 5 at QoS 1/2; otherwise acknowledged and dropped.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	who := acl.Who{Identity: string(cl.Properties.Username), ClientID: cl.ID}
	if h.policy.Load().acl.CanWrite(who, pk.TopicName) {
		return pk, nil
	}
	h.denied(cl, "publish", pk.TopicName)
	return pk, reject.Publish(cl, pk, packets.ErrNotAuthorized.Code,
		fmt.Sprintf("not authorized to publish to %q (auth.acl)", pk.TopicName))
}

func (h *Hook) denied(cl *mqtt.Client, action, topic string) {
	h.counts.denied(action)
	if suppressed, ok := h.limiter.Allow(action+"\x00"+cl.ID, time.Now()); ok {
		args := []any{"client", cl.ID, "identity", string(cl.Properties.Username), "topic", topic}
		if suppressed > 0 {
			args = append(args, "suppressed", suppressed)
		}
		h.Log.Warn(action+" denied by the ACL", args...)
	}
}
