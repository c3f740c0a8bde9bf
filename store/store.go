// Package store is the broker's one Badger database: retained messages,
// sessions, subscriptions and inflight messages (for the persistence hook),
// and the health of every service with its history (for the health
// recorder). It is tuned for a Raspberry Pi class device on an SD card: a
// small memtable, no block cache, small value-log files, no writes on a
// timer when nothing changed, and a damaged database moved aside rather than
// keeping the broker from starting.
//
// Lifecycle: New, then Open, then Close.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// gcInterval is how often the value log is garbage collected and health
// history pruned; both write only when there is something to reclaim.
const gcInterval = 10 * time.Minute

// Store is the database.
type Store struct {
	cfg Config
	log *slog.Logger
	db  *badger.DB

	recovery *Recovery // set when a damaged database was moved aside at Open

	mu      sync.Mutex
	history map[string]int // history records per service, once counted

	syncs struct { // see groupSync
		mu          sync.Mutex
		cond        *sync.Cond
		asked, done uint64
		running     bool
		err         error
	}

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// New returns a Store for cfg; Open opens it.
func New(cfg Config, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{cfg: cfg, log: log, history: map[string]int{}, stop: make(chan struct{})}
}

// dbDir is where Badger's files live: inside Dir, so that a damaged
// database can be moved aside without write access to Dir's parent (which
// systemd's StateDirectory does not give).
func (s *Store) dbDir() string { return filepath.Join(s.cfg.Dir, "db") }

// Open opens the database, replaying its log after a crash. A database that
// does not open (damaged files, a panic inside Badger) or that the broker
// failed to start on several times in a row is moved aside and replaced by
// an empty one; Recovered says so. The broker calls EndStart once its start
// is over.
func (s *Store) Open() (err error) {
	if err := checkPlatform(strconv.IntSize); err != nil {
		return err
	}
	if err := s.cfg.Validate(); err != nil {
		return err
	}
	if err := s.makeDir(); err != nil {
		return fmt.Errorf("open store %q: %w", s.cfg.Dir, err)
	}
	if err := checkDirMode(s.cfg.Dir); err != nil {
		return err
	}
	if heldByOther(s.dbDir()) {
		return fmt.Errorf("open store %q: another process holds it (pid %s): is another tarsmq serve running with the same store.dir? (systemctl status tarsmq)",
			s.dbDir(), lockPID(s.dbDir()))
	}
	if failures := s.startFailures(); failures >= crashLoopLimit {
		if err := s.moveAside(fmt.Sprintf("the broker failed to start %d times in a row with this database", failures)); err != nil {
			return err
		}
	}
	if err := s.markStarting(); err != nil {
		return fmt.Errorf("open store %q: %w", s.cfg.Dir, err)
	}
	defer func() {
		if err != nil {
			_ = s.EndStart() // an Open that returns an error is no crash
		}
	}()
	db, err := openBadger(s.dbDir(), s.log)
	if err != nil && isDamage(err) {
		s.log.Error("store does not open", "dir", s.dbDir(), "error", err)
		if merr := s.moveAside(err.Error()); merr != nil {
			return merr
		}
		db, err = openBadger(s.dbDir(), s.log)
	}
	if err != nil {
		return fmt.Errorf("open store %q: %w", s.dbDir(), err)
	}
	s.db = db
	if s.recovery != nil {
		if err := s.saveRecovery(); err != nil {
			s.log.Warn("store: cannot record the recovery", "error", err)
		}
	} else if r, err := s.loadRecovery(); err == nil {
		s.recovery = r
	}
	s.wg.Add(1)
	go s.maintain()
	return nil
}

// Opened reports whether Open succeeded.
func (s *Store) Opened() bool { return s.db != nil }

// OpenExisting opens the database for a one-off read (tarsmq health with no
// broker running): no recovery, no crash-loop accounting.
func (s *Store) OpenExisting() error {
	if err := checkPlatform(strconv.IntSize); err != nil {
		return err
	}
	if _, err := os.Stat(s.dbDir()); err != nil {
		return fmt.Errorf("open store %q: %w", s.dbDir(), err)
	}
	db, err := openBadger(s.dbDir(), s.log)
	if err != nil {
		return fmt.Errorf("open store %q: %w", s.dbDir(), err)
	}
	s.db = db
	s.recovery, _ = s.loadRecovery()
	return nil
}

// checkPlatform refuses 32-bit platforms: Badger's allocator (ristretto's z
// package) corrupts tables there.
func checkPlatform(intSize int) error {
	if intSize < 64 {
		return errors.New("store: tarsmq's database (Badger) corrupts its tables on 32-bit platforms; " +
			"run tarsmq on a 64-bit OS (on a Raspberry Pi: the 64-bit Raspberry Pi OS, arm64)")
	}
	return nil
}

// badgerOptions returns Badger's options for a small device.
func badgerOptions(dir string, log *slog.Logger) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(badgerLog{log}).
		WithMemTableSize(4 << 20). // default 64 MiB
		WithNumMemtables(2).       // default 5
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(4). // must exceed NumLevelZeroTables
		WithNumCompactors(2).           // Badger needs at least 2
		WithBaseTableSize(2 << 20).
		WithValueThreshold(64 << 10).                     // at most 15% of the memtable; health records stay in the LSM tree
		WithValueLogFileSize(16 << 20).                   // default 1 GiB
		WithBlockCacheSize(0).                            // default 256 MiB; fine without compression
		WithCompression(options.None).                    // compression needs a block cache
		WithIndexCacheSize(0).                            // indexes stay in memory: the database is small
		WithDetectConflicts(false).                       // no concurrent read-modify-write transactions
		WithMetricsEnabled(false).                        // Badger's own expvar metrics
		WithNumGoroutines(2).                             // for streaming (not used at runtime)
		WithChecksumVerificationMode(options.OnTableRead) // find damaged tables at open, not on some later read
}

// openBadger opens Badger after checking its tables, turning a panic
// inside it into an error.
func openBadger(dir string, log *slog.Logger) (db *badger.DB, err error) {
	if err := checkTables(dir); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("badger panicked while opening: %v", r)
		}
	}()
	return badger.Open(badgerOptions(dir, log))
}

// isDamage reports whether an open error means the files are damaged, as
// opposed to a database another process holds, a permission problem or a
// full disk, which moving the files aside would not fix.
func isDamage(err error) bool {
	switch {
	case errors.Is(err, os.ErrPermission), errors.Is(err, errNoSpace), errors.Is(err, errReadOnly):
		return false
	case isLocked(err):
		return false
	}
	return true
}

// makeDir creates the store directory with its configured mode and group,
// unless it exists.
func (s *Store) makeDir() error {
	if _, err := os.Stat(s.cfg.Dir); err == nil {
		return nil
	}
	mode, _ := s.cfg.dirMode() // validated
	gid, err := s.cfg.dirGroup()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.cfg.Dir, 0o700); err != nil {
		return err
	}
	if gid >= 0 {
		if err := os.Chown(s.cfg.Dir, -1, gid); err != nil {
			return fmt.Errorf("set group %s: %w (the broker's user must belong to it)", s.cfg.DirGroup, err)
		}
	}
	return os.Chmod(s.cfg.Dir, mode)
}

// checkDirMode refuses a state directory others can write to: anyone who
// can replace files in it controls what the broker restores.
func checkDirMode(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("open store %q: %w", dir, err)
	}
	if fi.Mode().Perm()&0o002 != 0 {
		return fmt.Errorf("open store %q: the directory is world-writable (mode %#o); run chmod o-w %s (tarsmq creates it 0700)", dir, fi.Mode().Perm(), dir)
	}
	return nil
}

// lockPID reads the pid Badger writes into its LOCK file, or "unknown".
func lockPID(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "LOCK"))
	if pid := strings.TrimSpace(string(b)); err == nil && pid != "" && len(pid) < 12 {
		return pid
	}
	return "unknown"
}

// Recovered describes the damaged database moved aside at Open (in this
// run or an earlier one), or nil.
func (s *Store) Recovered() *Recovery { return s.recovery }

// maintain runs value-log GC and history pruning until Close.
func (s *Store) maintain() {
	defer s.wg.Done()
	t := time.NewTicker(gcInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			for s.db.RunValueLogGC(0.5) == nil {
			}
			if err := s.pruneAll(); err != nil {
				s.log.Warn("store: prune health history", "error", err)
			}
		}
	}
}

// Close stops maintenance and closes the database, writing its memtable to
// disk. It may be called more than once.
func (s *Store) Close(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		close(s.stop)
		done := make(chan error, 1)
		go func() {
			s.wg.Wait()
			if s.db != nil {
				done <- s.db.Close()
				return
			}
			done <- nil
		}()
		select {
		case err = <-done:
		case <-ctx.Done():
			err = fmt.Errorf("close store: %w", ctx.Err())
		}
	})
	return err
}

// Put stores value under key; with sync (and store.sync on) it is on disk
// when Put returns.
func (s *Store) Put(key, value []byte, sync bool) error {
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(key, value) }); err != nil {
		return err
	}
	return s.syncIf(sync)
}

// Delete removes key, syncing like Put.
func (s *Store) Delete(key []byte, sync bool) error {
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(key) }); err != nil {
		return err
	}
	return s.syncIf(sync)
}

// Ping reads from the database: an error means it does not answer.
func (s *Store) Ping() error {
	if s.db == nil {
		return errors.New("store: not open")
	}
	err := s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(recoveryKey)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Has reports whether key is stored.
func (s *Store) Has(key []byte) bool {
	err := s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(key)
		return err
	})
	return err == nil
}

// DeletePrefix removes every key starting with prefix, in one batch (not
// Badger's DropPrefix, which stops all writes to flush the memtables).
func (s *Store) DeletePrefix(prefix []byte) error {
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil {
		return err
	}
	return s.DeleteKeys(keys, false)
}

func (s *Store) syncIf(sync bool) error {
	if sync && s.cfg.Sync {
		return s.groupSync()
	}
	return nil
}

// groupSync makes what was written before the call durable. Writers that
// sync at once share one fsync (group commit): a caller waits for the
// first fsync that starts after it arrived, rather than each running its
// own, one after the other.
func (s *Store) groupSync() error {
	g := &s.syncs
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cond == nil {
		g.cond = sync.NewCond(&g.mu)
	}
	g.asked++
	ticket := g.asked
	for g.done < ticket {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		covers := g.asked
		g.mu.Unlock()
		err := s.db.Sync()
		g.mu.Lock()
		g.running, g.done, g.err = false, covers, err
		g.cond.Broadcast()
	}
	return g.err
}

// Scan calls fn for every key with prefix, in key order. The slices are
// only valid during the call.
func (s *Store) Scan(prefix []byte, fn func(key, value []byte) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			if err := item.Value(func(v []byte) error { return fn(item.Key(), v) }); err != nil {
				return err
			}
		}
		return nil
	})
}

// ScanFrom calls fn for each key with prefix, in order, from the first at
// or after from, until fn returns false or an error. The slices are valid
// only during the call.
func (s *Store) ScanFrom(prefix, from []byte, fn func(key, value []byte) (more bool, err error)) error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
		defer it.Close()
		for it.Seek(from); it.Valid(); it.Next() {
			item := it.Item()
			more := true
			if err := item.Value(func(v []byte) (err error) {
				more, err = fn(item.Key(), v)
				return err
			}); err != nil {
				return err
			}
			if !more {
				return nil
			}
		}
		return nil
	})
}

// DeleteKeys deletes keys in one batch; with sync (and store.sync on) the
// deletion is on disk when it returns.
func (s *Store) DeleteKeys(keys [][]byte, sync bool) error {
	if len(keys) == 0 {
		return nil
	}
	wb := s.db.NewWriteBatch()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			wb.Cancel()
			return err
		}
	}
	if err := wb.Flush(); err != nil {
		return err
	}
	return s.syncIf(sync)
}

// Size is the database's size on disk now: its LSM tables (with the
// manifest) and its value log (with the write-ahead memtables). Badger's
// own Size needs its expvar metrics, which are off.
func (s *Store) Size() (lsm, vlog int64, err error) {
	entries, err := os.ReadDir(s.dbDir())
	if err != nil {
		return 0, 0, fmt.Errorf("store size: %w", err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue // removed by a compaction since ReadDir
		}
		switch filepath.Ext(e.Name()) {
		case ".vlog", ".mem":
			vlog += info.Size()
		default:
			lsm += info.Size()
		}
	}
	return lsm, vlog, nil
}

// badgerLog sends Badger's log to slog; its chatty Info becomes Debug.
type badgerLog struct{ log *slog.Logger }

func (l badgerLog) Errorf(f string, a ...any)   { l.log.Error("badger: " + trim(fmt.Sprintf(f, a...))) }
func (l badgerLog) Warningf(f string, a ...any) { l.log.Warn("badger: " + trim(fmt.Sprintf(f, a...))) }
func (l badgerLog) Infof(f string, a ...any)    { l.log.Debug("badger: " + trim(fmt.Sprintf(f, a...))) }
func (l badgerLog) Debugf(f string, a ...any)   { l.log.Debug("badger: " + trim(fmt.Sprintf(f, a...))) }

func trim(s string) string {
	for len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	return s
}
