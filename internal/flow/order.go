package flow

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// sequence numbers the QoS 1/2 messages in flight to persistent sessions
// in the order the broker published them. mochi resends a resumed
// session's messages in an order of its own (map order, sorted by the
// second of creation), and packet identifiers do not tell the order either
// once a session has been taken over (each client counts them from 1); a
// Conn puts the resends in this order.
type sequence struct {
	mu   sync.Mutex
	next uint64
	by   map[string]map[uint16]uint64 // by client id, packet id
}

// stamp records that the message cl has in flight as id was published
// now, or at seq if seq is not 0; it returns the sequence number.
func (s *sequence) stamp(clientID string, id uint16, seq uint64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq == 0 {
		s.next++
		seq = s.next
	}
	m := s.by[clientID]
	if m == nil {
		if s.by == nil {
			s.by = make(map[string]map[uint16]uint64)
		}
		m = make(map[uint16]uint64)
		s.by[clientID] = m
	}
	m[id] = seq
	return seq
}

// of returns the sequence number of a message in flight, 0 if unknown
// (restored from the store after a restart).
func (s *sequence) of(clientID string, id uint16) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.by[clientID][id]
}

// done forgets a message no longer in flight.
func (s *sequence) done(clientID string, id uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.by[clientID]; m != nil {
		delete(m, id)
		if len(m) == 0 {
			delete(s.by, clientID)
		}
	}
}

// forget forgets a client's messages: its session ended.
func (s *sequence) forget(clientID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.by, clientID)
}

// tracked reports whether cl's messages in flight are numbered: only a
// persistent session is ever resumed.
func tracked(cl *mqtt.Client) bool { return persistentSession(cl) }
