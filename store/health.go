package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/tarsmq/tarsmq/envelope"
)

// HealthRecord is one health update as the broker received it.
type HealthRecord struct {
	Source   string          `json:"source"`
	Health   envelope.Health `json:"health"`   // the envelope's data
	TS       float64         `json:"ts"`       // the envelope's ts: when the service said it
	Received time.Time       `json:"received"` // when the broker got it
	Boot     string          `json:"boot"`     // the boot id at Received
	Envelope json.RawMessage `json:"envelope"` // as published
}

// Key layout: latest record per service, history per service in time
// order, last heartbeat per client.
var (
	latestPrefix   = []byte("h:l:")
	historyPrefix  = []byte("h:h:")
	lastSeenPrefix = []byte("h:s:")
)

func latestKey(source string) []byte { return append(bytes.Clone(latestPrefix), source...) }

func historyPrefixOf(source string) []byte {
	k := append(bytes.Clone(historyPrefix), source...)
	return append(k, 0)
}

func historyKey(source string, at time.Time) []byte {
	return binary.BigEndian.AppendUint64(historyPrefixOf(source), uint64(at.UnixNano()))
}

// PutHealth records an update as the service's latest and appends it to
// its history, in one transaction, on disk before it returns when
// store.sync is on. History entries expire after history.max_age; beyond
// history.max_per_service the oldest go.
func (s *Store) PutHealth(r HealthRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	err = s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(latestKey(r.Source), b); err != nil {
			return err
		}
		return txn.SetEntry(badger.NewEntry(historyKey(r.Source, r.Received), b).WithTTL(s.cfg.History.MaxAge))
	})
	if err != nil {
		return fmt.Errorf("store health of %q: %w", r.Source, err)
	}
	if err := s.syncIf(true); err != nil {
		return fmt.Errorf("sync health of %q: %w", r.Source, err)
	}
	return s.countHistory(r.Source)
}

// countHistory keeps the history of source within max_per_service,
// counting its records once and then keeping count.
func (s *Store) countHistory(source string) error {
	s.mu.Lock()
	n, known := s.history[source]
	s.mu.Unlock()
	if !known {
		return s.prune(source)
	}
	n++
	s.mu.Lock()
	s.history[source] = n
	s.mu.Unlock()
	if n > s.cfg.History.MaxPerService+s.cfg.History.MaxPerService/10 { // prune in batches
		return s.prune(source)
	}
	return nil
}

// prune deletes the oldest history records of source beyond the bound.
func (s *Store) prune(source string) error {
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: historyPrefixOf(source)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil {
		return err
	}
	extra := len(keys) - s.cfg.History.MaxPerService
	if extra > 0 {
		wb := s.db.NewWriteBatch()
		for _, k := range keys[:extra] {
			if err := wb.Delete(k); err != nil {
				wb.Cancel()
				return err
			}
		}
		if err := wb.Flush(); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.history[source] = min(len(keys), s.cfg.History.MaxPerService)
	s.mu.Unlock()
	return nil
}

// pruneAll prunes every service with latest health.
func (s *Store) pruneAll() error {
	recs, err := s.Health()
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		errs = append(errs, s.prune(r.Source))
	}
	return errors.Join(errs...)
}

// Health returns every service's latest record, by source.
func (s *Store) Health() ([]HealthRecord, error) {
	var out []HealthRecord
	err := s.Scan(latestPrefix, func(_, v []byte) error {
		var r HealthRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return nil // a record we cannot read is skipped, not fatal
		}
		out = append(out, r)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Source < out[j].Source })
	return out, err
}

// HealthOf returns the latest record of source.
func (s *Store) HealthOf(source string) (HealthRecord, bool, error) {
	var r HealthRecord
	found := false
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(latestKey(source))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		return item.Value(func(v []byte) error { return json.Unmarshal(v, &r) })
	})
	return r, found, err
}

// History returns up to limit of source's records, newest first.
func (s *Store) History(source string, limit int) ([]HealthRecord, error) {
	var out []HealthRecord
	prefix := historyPrefixOf(source)
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, Reverse: true})
		defer it.Close()
		last := append(bytes.Clone(prefix), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
		for it.Seek(last); it.Valid() && len(out) < limit; it.Next() {
			var r HealthRecord
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &r) }); err != nil {
				continue
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// SetLastSeen records when each client last sent a heartbeat, in one
// write, without sync: it is a hint, and losing the last seconds of it to a
// power cut costs nothing.
func (s *Store) SetLastSeen(seen map[string]time.Time) error {
	if len(seen) == 0 {
		return nil
	}
	wb := s.db.NewWriteBatch()
	for id, t := range seen {
		k := append(bytes.Clone(lastSeenPrefix), id...)
		e := badger.NewEntry(k, binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano()))).WithTTL(s.cfg.History.MaxAge)
		if err := wb.SetEntry(e); err != nil {
			wb.Cancel()
			return err
		}
	}
	return wb.Flush()
}

// LastSeen returns the last heartbeat of every client on record.
func (s *Store) LastSeen() (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := s.Scan(lastSeenPrefix, func(k, v []byte) error {
		if len(v) == 8 {
			out[string(k[len(lastSeenPrefix):])] = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
		}
		return nil
	})
	return out, err
}
