package bridge

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tarsmq/tarsmq/store"
)

// Hook is the mochi hook of the broker's bridges: it offers every message
// published locally to each bridge before the publisher is acknowledged
// (so a queued message is on disk first), and tells MQTT 5 clients this
// broker's id in the CONNACK, which a bridging tarsmq uses against loops,
// with the broker's maximum packet size (mochi announces none), so that a
// client does not send what would get it disconnected.
type Hook struct {
	mqtt.HookBase
	brokerID  string
	maxPacket uint32
	bridges   []*Bridge
}

// hookEvents are the events the hook handles.
var hookEvents = []byte{
	mqtt.OnPublish,
	mqtt.OnPacketEncode,
}

// NewHook returns the hook for bridges, logging to log; maxPacket is the
// broker's maximum packet size (0: none).
func NewHook(brokerID string, maxPacket uint32, bridges []*Bridge, log *slog.Logger) *Hook {
	h := &Hook{brokerID: brokerID, maxPacket: maxPacket, bridges: bridges}
	h.Log = log
	return h
}

// ID names the hook.
func (h *Hook) ID() string { return "bridges" }

// Provides says whether the hook handles event b.
func (h *Hook) Provides(b byte) bool { return bytes.IndexByte(hookEvents, b) >= 0 }

// SetOpts keeps the hook's own logger rather than mochi's.
func (h *Hook) SetOpts(_ *slog.Logger, opts *mqtt.HookOptions) { h.Opts = opts }

// OnPublish offers the message to every bridge.
func (h *Hook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	for _, b := range h.bridges {
		b.offer(pk)
	}
	return pk, nil
}

// OnPacketEncode adds this broker's id and maximum packet size to an MQTT
// 5 CONNACK.
func (h *Hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && cl.Properties.ProtocolVersion == 5 && pk.ReasonCode < 0x80 {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: propBrokerID, Val: h.brokerID})
		pk.Properties.MaximumPacketSize = h.maxPacket
	}
	return pk
}

// brokerIDKey keeps the broker's id in the store.
var brokerIDKey = []byte("meta:broker-id")

// BrokerID returns the broker's id, made at its first start and kept in
// the store.
func BrokerID(st *store.Store) (string, error) {
	var id string
	err := st.Scan(brokerIDKey, func(_, v []byte) error {
		id = string(v)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("broker id: %w", err)
	}
	if id != "" {
		return id, nil
	}
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	id = hex.EncodeToString(b)
	if err := st.Put(brokerIDKey, []byte(id), true); err != nil {
		return "", errors.Join(errors.New("broker id"), err)
	}
	return id, nil
}
