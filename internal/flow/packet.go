package flow

import (
	"encoding/binary"
	"errors"
)

// MQTT control packet types this package looks at.
const (
	typeConnack = 2
	typePublish = 3
)

var errMalformed = errors.New("flow: malformed MQTT packet in the write stream")

// frame is the size of the first MQTT packet in b: its fixed header plus the
// remaining length. ok is false while b holds only part of the packet.
func frame(b []byte) (size int, ok bool, err error) {
	if len(b) < 2 {
		return 0, false, nil
	}
	remaining, shift := 0, 0
	for i := 1; i < 5; i++ {
		if i >= len(b) {
			return 0, false, nil
		}
		remaining |= int(b[i]&0x7f) << shift
		if b[i]&0x80 == 0 {
			size = i + 1 + remaining
			return size, len(b) >= size, nil
		}
		shift += 7
	}
	return 0, false, errMalformed
}

// message is one encoded outbound PUBLISH packet held by a Conn.
type message struct {
	b   []byte
	qos byte
	id  uint16 // packet identifier, only for QoS 1 and 2
	dup bool
}

// parsePublish reads the fields of an encoded PUBLISH packet that flow
// control needs.
func parsePublish(b []byte) (message, error) {
	m := message{b: b, qos: (b[0] >> 1) & 3, dup: b[0]&0x08 != 0}
	if m.qos == 0 {
		return m, nil
	}
	h := 2
	for b[h-1]&0x80 != 0 {
		h++
	}
	if len(b) < h+2 {
		return m, errMalformed
	}
	at := h + 2 + int(binary.BigEndian.Uint16(b[h:]))
	if len(b) < at+2 {
		return m, errMalformed
	}
	m.id = binary.BigEndian.Uint16(b[at:])
	return m, nil
}
