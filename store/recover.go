package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"
)

// crashLoopLimit is how many starts in a row may fail before the database
// is taken for the cause and moved aside.
const crashLoopLimit = 3

var (
	errNoSpace  = syscall.ENOSPC
	errReadOnly = syscall.EROFS
)

// isLocked reports Badger's "another process holds this database".
func isLocked(err error) bool {
	return strings.Contains(err.Error(), "Cannot acquire directory lock")
}

// Recovery is a damaged database that was moved aside.
type Recovery struct {
	At      time.Time `json:"at"`
	Reason  string    `json:"reason"`
	MovedTo string    `json:"moved_to"`
}

func (s *Store) markerPath() string { return filepath.Join(s.cfg.Dir, "starting") }

// startFailures is how many starts began and never reached Started.
func (s *Store) startFailures() int {
	b, err := os.ReadFile(s.markerPath())
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// markStarting counts this start, durably, before Badger is opened: a start
// that crashes the process leaves the count up.
func (s *Store) markStarting() error {
	return writeFileSync(s.markerPath(), []byte(strconv.Itoa(s.startFailures()+1)+"\n"))
}

// EndStart tells the store the broker's start is over, whether it worked or
// returned an error (a port in use, say), without the process dying: the
// crash-loop count starts again from zero.
func (s *Store) EndStart() error {
	err := os.Remove(s.markerPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// moveAside renames the database directory to db.corrupt-<time> beside it,
// keeping it for inspection, and clears the crash-loop count.
func (s *Store) moveAside(reason string) error {
	now := time.Now().UTC()
	if _, err := os.Stat(s.dbDir()); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if heldByOther(s.dbDir()) {
		return fmt.Errorf("store %s is in use by another process (another tarsmq, or tarsmq health reading it); it was not moved", s.dbDir())
	}
	to := filepath.Join(s.cfg.Dir, "db.corrupt-"+now.Format("20060102T150405Z"))
	for n := 2; ; n++ { // two recoveries within a second
		if _, err := os.Lstat(to); errors.Is(err, os.ErrNotExist) {
			break
		}
		to = filepath.Join(s.cfg.Dir, fmt.Sprintf("db.corrupt-%s-%d", now.Format("20060102T150405Z"), n))
	}
	if err := os.Rename(s.dbDir(), to); err != nil {
		return fmt.Errorf("store: cannot move the damaged database %s aside: %w", s.dbDir(), err)
	}
	_ = os.Remove(s.markerPath())
	s.recovery = &Recovery{At: now, Reason: reason, MovedTo: to}
	s.log.Error("store: the database was damaged; it was moved aside and the broker starts with an empty one (retained messages, sessions and health history are in the old copy)",
		"reason", reason, "kept_at", to)
	return nil
}

var recoveryKey = []byte("meta:recovery")

func (s *Store) saveRecovery() error {
	b, err := json.Marshal(s.recovery)
	if err != nil {
		return err
	}
	return s.Put(recoveryKey, b, true)
}

func (s *Store) loadRecovery() (*Recovery, error) {
	var r *Recovery
	err := s.Scan(recoveryKey, func(_, v []byte) error {
		r = new(Recovery)
		return json.Unmarshal(v, r)
	})
	return r, err
}

// writeFileSync writes a small file and fsyncs it.
func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// heldByOther reports whether another process holds Badger's lock on dir
// (an flock on the directory itself).
func heldByOther(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// checkTables opens every table file with Badger's own table reader before
// Badger does: a damaged table makes Badger panic in a goroutine of its own
// during Open, where no recover can reach, and the process dies. Here the
// panic is caught and reported as damage.
func checkTables(dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.sst"))
	if err != nil {
		return err
	}
	for _, f := range files {
		if err := checkTable(f); err != nil {
			return fmt.Errorf("table %s: %w", filepath.Base(f), err)
		}
	}
	return nil
}

func checkTable(path string) (err error) {
	mf, err := z.OpenMmapFile(path, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			_ = mf.Close(-1)
			err = fmt.Errorf("unreadable: %v", r)
		}
	}()
	// Read-only, and closed through its file: a Table's DecrRef would
	// delete the file.
	if _, err := table.OpenTable(mf, table.Options{
		ReadOnly: true, ChkMode: options.OnTableRead, BlockSize: 4 << 10, BloomFalsePositive: 0.01,
	}); err != nil {
		return err // OpenTable closed mf
	}
	return mf.Close(-1)
}
