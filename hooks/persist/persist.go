// Package persist is the mochi storage hook that keeps retained messages,
// persistent sessions, their subscriptions and their QoS 1/2 messages in
// flight in the broker's store, so they survive a restart. It replaces
// mochi's Badger hook, which opens a second database with desktop defaults
// and writes $SYS counters every second.
//
// Only what can outlive a connection is written: a clean session (MQTT 5
// session expiry 0, MQTT 3.1.1 clean session) costs no disk writes.
// Retained writes are synced (store.sync) before the publisher's PUBACK.
package persist

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/internal/lograte"
	"github.com/tarsmq/tarsmq/store"
)

// Key prefixes in the store.
var (
	clientPrefix   = []byte("m:c:")
	subPrefix      = []byte("m:s:")
	inflightPrefix = []byte("m:i:")
	retainedPrefix = []byte("m:r:")
)

func clientKey(id string) []byte { return append(bytes.Clone(clientPrefix), id...) }

func subsOf(id string) []byte { return append(append(bytes.Clone(subPrefix), id...), 0) }

func subKey(id, filter string) []byte { return append(subsOf(id), filter...) }

func inflightOf(id string) []byte { return append(append(bytes.Clone(inflightPrefix), id...), 0) }

func inflightKey(id string, packetID uint16) []byte {
	return binary.BigEndian.AppendUint16(inflightOf(id), packetID)
}

func retainedKey(topic string) []byte { return append(bytes.Clone(retainedPrefix), topic...) }

// Hook is the storage hook. Add it with Server.AddHook(hook, nil).
type Hook struct {
	mqtt.HookBase
	st      *store.Store
	limiter *lograte.Limiter
	errs    atomic.Uint64
}

// New returns a Hook on st that logs to log.
func New(st *store.Store, log *slog.Logger) *Hook {
	h := &Hook{st: st, limiter: lograte.New(10 * time.Second)}
	h.Log = log
	return h
}

// ID names the hook.
func (h *Hook) ID() string { return "persist" }

// persistEvents are the events the hook handles.
var persistEvents = []byte{
	mqtt.OnSessionEstablished,
	mqtt.OnDisconnect,
	mqtt.OnClientExpired,
	mqtt.OnWillSent,
	mqtt.OnSubscribed,
	mqtt.OnUnsubscribed,
	mqtt.OnRetainMessage,
	mqtt.OnRetainedExpired,
	mqtt.OnQosPublish,
	mqtt.OnQosComplete,
	mqtt.OnQosDropped,
	mqtt.StoredClients,
	mqtt.StoredSubscriptions,
	mqtt.StoredInflightMessages,
	mqtt.StoredRetainedMessages,
}

// Provides lists the events the hook stores or loads.
func (h *Hook) Provides(b byte) bool { return bytes.IndexByte(persistEvents, b) >= 0 }

// Init takes no configuration.
func (h *Hook) Init(config any) error {
	if config != nil {
		return fmt.Errorf("persist: %w: takes no config, got %T", mqtt.ErrInvalidConfigType, config)
	}
	if h.st == nil {
		return errors.New("persist: no store")
	}
	return nil
}

// SetOpts keeps the hook's own logger rather than mochi's.
func (h *Hook) SetOpts(_ *slog.Logger, opts *mqtt.HookOptions) { h.Opts = opts }

// WriteErrors is how many store writes failed.
func (h *Hook) WriteErrors() uint64 { return h.errs.Load() }

func (h *Hook) failed(what string, err error) {
	if err == nil {
		return
	}
	h.errs.Add(1)
	if n, ok := h.limiter.Allow(what, time.Now()); ok {
		h.Log.Error("store write failed: "+what, "error", err, "suppressed", n)
	}
}

// persistent reports whether cl's session outlives its connection. The
// broker's own inline client (its subscriptions are callbacks, set up anew
// at every start) is never stored.
func persistent(cl *mqtt.Client) bool {
	if cl.Net.Inline {
		return false
	}
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// OnSessionEstablished stores a persistent session's client; a clean start
// forgets whatever an earlier session of that client id left.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if pk.Connect.Clean {
		h.forget(cl.ID)
	}
	if persistent(cl) {
		h.putClient(cl)
	}
}

// OnWillSent stores the client without its will.
func (h *Hook) OnWillSent(cl *mqtt.Client, _ packets.Packet) {
	if persistent(cl) {
		h.putClient(cl)
	}
}

// OnDisconnect forgets a session that ends with its connection.
func (h *Hook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire && !cl.IsTakenOver() {
		h.forget(cl.ID)
	}
}

// OnClientExpired forgets an expired session.
func (h *Hook) OnClientExpired(cl *mqtt.Client) { h.forget(cl.ID) }

// forget deletes what is stored of a session; a session never stored costs
// reads only.
func (h *Hook) forget(id string) {
	if h.st.Has(clientKey(id)) {
		h.failed("delete client", h.st.Delete(clientKey(id), false))
	}
	h.failed("delete subscriptions", h.st.DeletePrefix(subsOf(id)))
	h.failed("delete inflight", h.st.DeletePrefix(inflightOf(id)))
}

func (h *Hook) putClient(cl *mqtt.Client) {
	props := cl.Properties.Props.Copy(false)
	c := storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval:     props.SessionExpiryInterval,
			SessionExpiryIntervalFlag: props.SessionExpiryIntervalFlag,
			AuthenticationMethod:      props.AuthenticationMethod,
			AuthenticationData:        props.AuthenticationData,
			RequestProblemInfo:        props.RequestProblemInfo,
			RequestProblemInfoFlag:    props.RequestProblemInfoFlag,
			RequestResponseInfo:       props.RequestResponseInfo,
			ReceiveMaximum:            props.ReceiveMaximum,
			TopicAliasMaximum:         props.TopicAliasMaximum,
			User:                      props.User,
			MaximumPacketSize:         props.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	}
	b, err := c.MarshalBinary()
	if err == nil {
		err = h.st.Put(clientKey(cl.ID), b, false)
	}
	h.failed("client", err)
}

// OnSubscribed stores a persistent session's granted subscriptions.
func (h *Hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if !persistent(cl) {
		return
	}
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] >= packets.ErrUnspecifiedError.Code {
			continue
		}
		s := storage.Subscription{
			ID: string(subKey(cl.ID, f.Filter)), T: storage.SubscriptionKey, Client: cl.ID,
			Filter: f.Filter, Qos: codes[i], Identifier: f.Identifier, NoLocal: f.NoLocal,
			RetainHandling: f.RetainHandling, RetainAsPublished: f.RetainAsPublished,
		}
		b, err := s.MarshalBinary()
		if err == nil {
			err = h.st.Put(subKey(cl.ID, f.Filter), b, false)
		}
		h.failed("subscription", err)
	}
}

// OnUnsubscribed removes a persistent session's subscriptions.
func (h *Hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if !persistent(cl) {
		return
	}
	for _, f := range pk.Filters {
		h.failed("delete subscription", h.st.Delete(subKey(cl.ID, f.Filter), false))
	}
}

// OnRetainMessage stores (or, for an empty payload, deletes) a retained
// message, synced before the publisher's PUBACK.
func (h *Hook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	if r == -1 {
		h.failed("delete retained", h.st.Delete(retainedKey(pk.TopicName), true))
		return
	}
	m := message(pk, cl.ID)
	m.T = storage.RetainedKey
	b, err := m.MarshalBinary()
	if err == nil {
		err = h.st.Put(retainedKey(pk.TopicName), b, true)
	}
	h.failed("retained", err)
}

// OnRetainedExpired deletes a retained message whose publisher's expiry
// has passed.
func (h *Hook) OnRetainedExpired(topic string) {
	h.failed("delete retained", h.st.Delete(retainedKey(topic), false))
}

// OnQosPublish stores a QoS 1/2 message in flight for a persistent session.
func (h *Hook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, _ int) {
	if !persistent(cl) {
		return
	}
	m := message(pk, cl.ID)
	m.T, m.Sent, m.PacketID = storage.InflightKey, sent, pk.PacketID
	b, err := m.MarshalBinary()
	if err == nil {
		err = h.st.Put(inflightKey(cl.ID, pk.PacketID), b, false)
	}
	h.failed("inflight", err)
}

// OnQosComplete deletes a completed message in flight.
func (h *Hook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) { h.DeleteInflight(cl, pk.PacketID) }

// OnQosDropped deletes a dropped message in flight.
func (h *Hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { h.DeleteInflight(cl, pk.PacketID) }

// DeleteInflight forgets a message in flight that will never be sent, for
// flow control's drops (mochi calls no hook for those).
func (h *Hook) DeleteInflight(cl *mqtt.Client, packetID uint16) {
	if persistent(cl) {
		h.failed("delete inflight", h.st.Delete(inflightKey(cl.ID, packetID), false))
	}
}

func message(pk packets.Packet, client string) storage.Message {
	props := pk.Properties.Copy(false)
	return storage.Message{
		Client:      client,
		Origin:      pk.Origin,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		Created:     pk.Created,
		Properties: storage.MessageProperties{
			PayloadFormat:          props.PayloadFormat,
			PayloadFormatFlag:      props.PayloadFormatFlag,
			MessageExpiryInterval:  props.MessageExpiryInterval,
			ContentType:            props.ContentType,
			ResponseTopic:          props.ResponseTopic,
			CorrelationData:        props.CorrelationData,
			SubscriptionIdentifier: props.SubscriptionIdentifier,
			TopicAlias:             props.TopicAlias,
			User:                   props.User,
		},
	}
}

// load decodes every value under prefix with decode.
func load[T any](h *Hook, prefix []byte, decode func(*T, []byte) error) ([]T, error) {
	var out []T
	err := h.st.Scan(prefix, func(k, v []byte) error {
		var x T
		if err := decode(&x, v); err != nil {
			h.Log.Warn("store: skipping an unreadable record", "key", string(k), "error", err)
			return nil
		}
		out = append(out, x)
		return nil
	})
	return out, err
}

// StoredClients loads the persistent sessions.
func (h *Hook) StoredClients() ([]storage.Client, error) {
	return load(h, clientPrefix, (*storage.Client).UnmarshalBinary)
}

// StoredSubscriptions loads their subscriptions.
func (h *Hook) StoredSubscriptions() ([]storage.Subscription, error) {
	return load(h, subPrefix, (*storage.Subscription).UnmarshalBinary)
}

// StoredInflightMessages loads their messages in flight.
func (h *Hook) StoredInflightMessages() ([]storage.Message, error) {
	return load(h, inflightPrefix, (*storage.Message).UnmarshalBinary)
}

// StoredRetainedMessages loads the retained messages.
func (h *Hook) StoredRetainedMessages() ([]storage.Message, error) {
	return load(h, retainedPrefix, (*storage.Message).UnmarshalBinary)
}

// RestoreExpiry gives restored messages their publisher's expiry back:
// mochi's loaders build packets without the expiry time or the protocol
// version its expiry sweep checks, so a retained message with an expiry
// would otherwise never expire after a restart. Call it after Serve.
func RestoreExpiry(srv *mqtt.Server) {
	fix := func(pk packets.Packet) (packets.Packet, bool) {
		if iv := pk.Properties.MessageExpiryInterval; iv > 0 && pk.Expiry == 0 {
			pk.ProtocolVersion, pk.Expiry = 5, pk.Created+int64(iv)
			return pk, true
		}
		return pk, false
	}
	for topic, pk := range srv.Topics.Retained.GetAll() {
		if pk, ok := fix(pk); ok {
			srv.Topics.Retained.Add(topic, pk)
		}
	}
	for _, cl := range srv.Clients.GetAll() {
		for _, pk := range cl.State.Inflight.GetAll(false) {
			if pk, ok := fix(pk); ok {
				cl.State.Inflight.Set(pk)
			}
		}
	}
}
