package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/tarsmq/tarsmq/store"
)

// record is one message on its way upstream.
type record struct {
	seq     uint64
	topic   string // remote topic
	payload []byte
	qos     byte
	retain  bool
	path    string // broker ids it has passed, comma separated
	size    int64  // what it takes in the queue
}

// queue is a bridge's store-and-forward queue: out QoS 1 messages in the
// broker's Badger store, in order, until the upstream acknowledges them.
// Keys are "bq:<bridge>:<seq, 16 hex digits>", so the store keeps them in
// order.
type queue struct {
	st     *store.Store
	prefix []byte
	cfg    QueueConfig

	mu       sync.Mutex
	next     uint64              // seq of the next message
	head     uint64              // no message below this seq is left: scans for the oldest start here
	count    int                 // messages queued
	bytes    int64               // and their size
	inflight map[uint64]struct{} // sent, not yet acknowledged: never dropped
	writing  map[uint64]struct{} // being written: not to be taken before they are
	dropped  uint64              // oldest dropped to make room
	refused  uint64              // new messages not queued, over the bound
	damaged  uint64              // records found unreadable in the store, removed
	notify   chan struct{}       // a message was queued
}

// openQueue takes stock of what an earlier run left queued.
func openQueue(st *store.Store, name string, cfg QueueConfig) (*queue, error) {
	q := &queue{st: st, prefix: []byte("bq:" + name + ":"), cfg: cfg, next: 1,
		inflight: map[uint64]struct{}{}, writing: map[uint64]struct{}{}, notify: make(chan struct{}, 1)}
	err := st.Scan(q.prefix, func(key, value []byte) error {
		seq, err := q.seqOf(key)
		if err != nil {
			return nil // take removes it
		}
		q.count++
		q.bytes += int64(len(key) + len(value))
		q.next = max(q.next, seq+1)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open bridge queue %s: %w", name, err)
	}
	return q, nil
}

func (q *queue) key(seq uint64) []byte {
	return fmt.Appendf(append([]byte(nil), q.prefix...), "%016x", seq)
}

func (q *queue) seqOf(key []byte) (uint64, error) {
	seq, err := strconv.ParseUint(string(key[len(q.prefix):]), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("bridge queue: bad key %q", key)
	}
	return seq, nil
}

// push queues r, durably (with store.sync) before it returns: the local
// publisher is acknowledged after. Over the bound it drops the oldest
// messages not in flight, or refuses r (queued false), as configured.
//
// Publishers push concurrently: the write (and its fsync, shared between
// them by the store) happens outside the lock, and take does not go past
// a message still being written, so the queue's order holds.
func (q *queue) push(r record) (queued bool, err error) {
	value := encode(r)
	q.mu.Lock()
	r.seq = q.next
	key := q.key(r.seq)
	size := int64(len(key) + len(value))
	if over := q.overLocked(1, size); over {
		if q.cfg.Overflow == RefuseNew {
			q.refused++
			q.mu.Unlock()
			return false, nil
		}
		if err := q.dropOldestLocked(size); err != nil {
			q.mu.Unlock()
			return false, err
		}
	}
	q.next++
	q.count++
	q.bytes += size
	q.writing[r.seq] = struct{}{}
	q.mu.Unlock()

	err = q.st.Put(key, value, true)

	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.writing, r.seq)
	if err != nil {
		q.count--
		q.bytes -= size
		return false, err
	}
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return true, nil
}

// writtenLocked is the last seq before which every message is written.
func (q *queue) writtenLocked() uint64 {
	last := q.next - 1
	for seq := range q.writing {
		last = min(last, seq-1)
	}
	return last
}

func (q *queue) overLocked(n int, size int64) bool {
	return (q.cfg.MaxMessages > 0 && q.count+n > q.cfg.MaxMessages) ||
		(q.cfg.MaxBytes > 0 && q.bytes+size > int64(q.cfg.MaxBytes))
}

// dropOldestLocked deletes the oldest messages not in flight until one of
// size fits.
func (q *queue) dropOldestLocked(size int64) error {
	var keys [][]byte
	count, bytes := q.count, q.bytes
	head, kept := q.head, false
	// From head, not the prefix: the deleted keys below it would be walked
	// again on every push of a full queue.
	err := q.st.ScanFrom(q.prefix, q.key(q.head), func(key, value []byte) (bool, error) {
		seq, err := q.seqOf(key)
		if !kept && err == nil {
			head = seq
		}
		if !(q.cfg.MaxMessages > 0 && count+1 > q.cfg.MaxMessages) && !(q.cfg.MaxBytes > 0 && bytes+size > int64(q.cfg.MaxBytes)) {
			return false, nil
		}
		if err != nil {
			return true, nil // take removes it
		}
		if _, busy := q.inflight[seq]; busy {
			kept = true
			return true, nil
		}
		if !kept {
			head = seq + 1
		}
		keys = append(keys, append([]byte(nil), key...))
		count--
		bytes -= int64(len(key) + len(value))
		return true, nil
	})
	if err != nil {
		return err
	}
	if err := q.st.DeleteKeys(keys, false); err != nil {
		return err
	}
	q.dropped += uint64(len(keys))
	q.count, q.bytes, q.head = count, bytes, head
	return nil
}

// take returns up to n messages after seq, in order, and marks them in
// flight. A record it cannot read (a damaged store) is removed and
// counted rather than left to block the queue: damaged is how many.
func (q *queue) take(after uint64, n int) (out []record, damaged int, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var bad [][]byte
	written := q.writtenLocked()
	err = q.st.ScanFrom(q.prefix, q.key(after+1), func(key, value []byte) (bool, error) {
		seq, err := q.seqOf(key)
		if err == nil && seq <= after {
			return true, nil // a key out of the hex order: never taken
		}
		if err == nil && seq > written {
			return false, nil // behind a message still being written
		}
		r, derr := decode(value)
		if err != nil || derr != nil {
			bad = append(bad, append([]byte(nil), key...))
			if err == nil {
				q.count--
				q.bytes -= int64(len(key) + len(value))
			}
			return true, nil
		}
		r.seq, r.size = seq, int64(len(key)+len(value))
		q.inflight[seq] = struct{}{}
		out = append(out, r)
		return len(out) < n, nil
	})
	if err == nil && len(bad) > 0 {
		err = q.st.DeleteKeys(bad, false)
		q.damaged += uint64(len(bad))
	}
	return out, len(bad), err
}

// done removes acknowledged messages from the queue.
func (q *queue) done(rs []record) error {
	if len(rs) == 0 {
		return nil
	}
	keys := make([][]byte, len(rs))
	for i, r := range rs {
		keys[i] = q.key(r.seq)
	}
	if err := q.st.DeleteKeys(keys, false); err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, r := range rs {
		if _, ok := q.inflight[r.seq]; ok {
			delete(q.inflight, r.seq)
			q.count--
			q.bytes -= r.size
		}
	}
	return nil
}

// release forgets what was in flight on a link that went down: it is sent
// again on the next.
func (q *queue) release() {
	q.mu.Lock()
	clear(q.inflight)
	q.mu.Unlock()
}

// stats returns the queue's figures.
func (q *queue) stats() (count int, bytes int64, dropped, refused, damaged uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.count, q.bytes, q.dropped, q.refused, q.damaged
}

// packetSize is at least the size of r as an MQTT 5 PUBLISH (with the
// path property), for checking it against the upstream's maximum.
func (r record) packetSize() int {
	n := 2 + len(r.topic) + 2 + 1 + len(r.payload) // topic, packet id, properties length
	if r.path != "" {
		n += 1 + 2 + len(propPath) + 2 + len(r.path)
	}
	return 1 + 4 + n // fixed header with the longest remaining length
}

// Record encoding: version 1, flags (qos | retain<<4), then length-prefixed
// topic and path, then the payload.
const recordVersion = 1

func encode(r record) []byte {
	b := make([]byte, 0, 2+4+len(r.topic)+len(r.path)+len(r.payload))
	flags := r.qos
	if r.retain {
		flags |= 1 << 4
	}
	b = append(b, recordVersion, flags)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.topic)))
	b = append(b, r.topic...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.path)))
	b = append(b, r.path...)
	return append(b, r.payload...)
}

var errRecord = errors.New("damaged record")

// decode reads a record; the payload is copied, value may be reused.
func decode(v []byte) (record, error) {
	if len(v) < 6 || v[0] != recordVersion {
		return record{}, errRecord
	}
	r := record{qos: v[1] & 0x0f, retain: v[1]&(1<<4) != 0}
	v = v[2:]
	n := int(binary.BigEndian.Uint16(v))
	if len(v) < 2+n+2 {
		return record{}, errRecord
	}
	r.topic = string(v[2 : 2+n])
	v = v[2+n:]
	m := int(binary.BigEndian.Uint16(v))
	if len(v) < 2+m {
		return record{}, errRecord
	}
	r.path = string(v[2 : 2+m])
	r.payload = append([]byte(nil), v[2+m:]...)
	return r, nil
}
