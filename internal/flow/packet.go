package flow

import (
	"cmp"
	"encoding/binary"
	"errors"
	"slices"
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

	adopted bool   // taken over from the session's previous client
	seq     uint64 // a resend's or adopted message's place in publish order; 0: unknown
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

// sessionPresent reports whether an encoded CONNACK has its Session Present
// flag set.
func sessionPresent(b []byte) bool {
	h := 2
	for h < len(b) && b[h-1]&0x80 != 0 {
		h++
	}
	return h < len(b) && b[h]&0x01 != 0
}

// resendOrder puts held publishes in the order they were first sent: the
// resends (DUP) of a resumed session first, in the order the broker
// published them (seq; those it does not know, restored after a restart,
// first, by packet identifier counted circularly from just after the widest
// gap between identifiers in use: the broker hands them out in increasing
// order and wraps), then the messages
// adopted from the session's previous client (see adopt), then the others
// in the order they came. A resend of a packet identifier that also came
// fresh is the same message: only the fresh one is kept. mochi resends in
// an order of its own (by second of creation, unstably sorted), which would
// shuffle a queue kept for an offline client. It returns the kept messages
// and those removed.
func resendOrder(held []message) (kept, removed []message) {
	var dups, adopted, fresh []message
	freshIDs := map[uint16]bool{}
	for _, m := range held {
		if m.adopted {
			adopted = append(adopted, m)
			continue
		}
		if !m.dup {
			fresh = append(fresh, m)
			if m.qos > 0 {
				freshIDs[m.id] = true
			}
		}
	}
	for _, m := range held {
		switch {
		case !m.dup || m.adopted:
		case m.qos > 0 && freshIDs[m.id]:
			removed = append(removed, m)
		default:
			dups = append(dups, m)
		}
	}
	dups = circular(dups, func(m message) uint16 { return m.id })
	slices.SortStableFunc(dups, func(a, b message) int { return cmp.Compare(a.seq, b.seq) })
	slices.SortStableFunc(adopted, func(a, b message) int { return cmp.Compare(a.seq, b.seq) })
	return slices.Concat(dups, adopted, fresh), removed
}
