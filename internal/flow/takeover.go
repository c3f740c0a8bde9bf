package flow

import (
	"bytes"
	"cmp"
	"slices"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// When a client resumes its session, mochi copies the old client's
// messages in flight to the new one, then clears the old one's; until the
// new client replaces the old in the client list, publishes still go to
// the old one. A QoS 1/2 message that reaches the old client after the
// copy was lost (a persistent subscriber reconnecting while messages
// flow). The controller keeps what the old client held after it was taken
// over (orphans) and hands it to the new client once its session is
// established, before anything published since, in the order it was
// published.

// maxOrphans bounds the messages kept per client id between a takeover
// and the new session's start.
const maxOrphans = 65535

// orphan is a message in flight of a client that was taken over, with its
// place in publish order.
type orphan struct {
	pk  packets.Packet
	seq uint64
}

// adopting reports whether cl's messages in flight are orphans to keep.
func adopting(cl *mqtt.Client) bool { return cl.IsTakenOver() && persistentSession(cl) }

// persistentSession reports whether cl's session outlives its connection.
func persistentSession(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// keepOrphan keeps a message in flight of a client that was taken over.
// Once the new client is online, it gets the message at once.
func (ctl *Controller) keepOrphan(cl *mqtt.Client, o orphan) {
	ctl.orphansMu.Lock()
	if len(ctl.orphans[cl.ID]) < maxOrphans {
		ctl.orphans[cl.ID] = append(ctl.orphans[cl.ID], o)
	}
	ctl.orphansMu.Unlock()
	ctl.mu.RLock()
	c := ctl.online[cl.ID]
	ctl.mu.RUnlock()
	if c != nil {
		if now := c.Client(); now != nil && now != cl {
			ctl.adopt(now, c)
		}
	}
}

// OnQosDropped keeps the messages mochi clears from a client it took over.
func (ctl *Controller) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if adopting(cl) {
		ctl.keepOrphan(cl, orphan{pk, ctl.seq.of(cl.ID, pk.PacketID)})
		return // its number may be the copy's, in the new client
	}
	ctl.seq.done(cl.ID, pk.PacketID)
}

// adopt gives cl, which took its session over, the messages its
// predecessor still received after mochi copied its messages in flight:
// those mochi did not copy get a new packet identifier and are written,
// marked so that the Conn sends them after the copied ones and before
// anything newer.
func (ctl *Controller) adopt(cl *mqtt.Client, c *Conn) {
	ctl.orphansMu.Lock()
	orphans := ctl.orphans[cl.ID]
	delete(ctl.orphans, cl.ID)
	ctl.orphansMu.Unlock()
	if len(orphans) == 0 {
		return
	}
	orphans = circular(orphans, func(o orphan) uint16 { return o.pk.PacketID })
	slices.SortStableFunc(orphans, func(a, b orphan) int { return cmp.Compare(a.seq, b.seq) })
	seen := map[uint16]bool{}
	for _, o := range orphans {
		pk := o.pk
		if seen[pk.PacketID] {
			continue // kept twice: cleared after it was published
		}
		seen[pk.PacketID] = true
		if have, ok := cl.State.Inflight.Get(pk.PacketID); ok && have.Created == pk.Created &&
			have.TopicName == pk.TopicName && bytes.Equal(have.Payload, pk.Payload) {
			continue // mochi copied it
		}
		id, err := cl.NextPacketID()
		if err != nil {
			ctl.countDrop(cl.ID)
			continue
		}
		old := pk.PacketID
		out := pk.Copy(true)
		out.PacketID, out.FixedHeader.Dup = uint16(id), false
		if cl.State.Inflight.Set(out) {
			atomic.AddInt64(&ctl.server.Info.Inflight, 1)
		}
		o.seq = ctl.seq.stamp(cl.ID, out.PacketID, o.seq)
		if ctl.OnAdoptInflight != nil {
			ctl.OnAdoptInflight(cl, old, out)
		}
		c.adopting(out.PacketID, o.seq)
		if err := cl.WritePacket(out); err != nil {
			return // the client is gone; the message stays in its session
		}
	}
}

// circular sorts items by a packet identifier, counted from just after
// the widest gap between the identifiers (the broker hands them out in
// increasing order and wraps at 65535).
func circular[T any](items []T, id func(T) uint16) []T {
	slices.SortStableFunc(items, func(a, b T) int { return cmp.Compare(id(a), id(b)) })
	n := len(items)
	if n < 2 {
		return items
	}
	start, widest := 0, int(id(items[0]))+65536-int(id(items[n-1]))
	for i := 1; i < n; i++ {
		if gap := int(id(items[i])) - int(id(items[i-1])); gap > widest {
			start, widest = i, gap
		}
	}
	return append(items[start:], items[:start]...)
}
