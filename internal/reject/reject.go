// Package reject refuses a PUBLISH from inside a mochi OnPublish hook the
// one way that works for every protocol version and QoS.
//
// mochi honours a reason code returned from OnPublish only for MQTT 5 at
// QoS 1 (and sends a PUBACK even for QoS 2), ignores it for MQTT 3.1.1 and
// QoS 0, and ErrRejectPacket drops the packet with no acknowledgement at all,
// which leaves a QoS 1 publisher waiting for ever. So an MQTT 5 publisher at
// QoS 1 or 2 gets the PUBACK or PUBREC written here, with the reason code
// and a reason string; any other publisher is acknowledged as usual and its
// message neither delivered nor retained.
package reject

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// MaxReasonLen bounds the reason string sent back.
const MaxReasonLen = 256

// Publish refuses pk from cl with code and reason and returns what the
// OnPublish hook must return: packets.ErrRejectPacket once the refusal is
// written, else packets.CodeSuccessIgnore.
func Publish(cl *mqtt.Client, pk packets.Packet, code byte, reason string) error {
	if cl.Properties.ProtocolVersion < 5 || pk.FixedHeader.Qos == 0 {
		return packets.CodeSuccessIgnore
	}
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Puback},
		PacketID:    pk.PacketID,
		ReasonCode:  code,
		Properties:  packets.Properties{ReasonString: Truncate(reason, MaxReasonLen)},
	}
	if pk.FixedHeader.Qos == 2 {
		ack.FixedHeader.Type = packets.Pubrec
	}
	_ = cl.WritePacket(ack)
	return packets.ErrRejectPacket
}

// Truncate cuts s to at most n bytes without splitting a UTF-8 sequence,
// marking the cut with "…".
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && s[cut]&0xc0 == 0x80 {
		cut--
	}
	return s[:cut] + "…"
}
