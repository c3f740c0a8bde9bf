// Package passwd reads and edits a password file of bcrypt hashes: one
// user:hash line per user, like mosquitto_passwd's format but bcrypt only
// ($2a$, $2b$ or $2y$), with blank lines and # comments allowed.
package passwd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"unicode"

	"golang.org/x/crypto/bcrypt"
)

// DefaultCost is the bcrypt cost of new hashes. Every connection that
// authenticates pays one bcrypt comparison: a Raspberry Pi 4 checks a
// cost-10 hash in roughly tens of milliseconds, enough to make offline
// guessing of a stolen file slow without making robot services (which
// connect once and stay connected) wait noticeably. Each step up doubles
// the time.
const DefaultCost = 10

// maxPassword is the longest password bcrypt hashes without truncating.
const maxPassword = 72

// ErrUnknownUser is wrapped by Delete's error when the user is not in the
// file.
var ErrUnknownUser = errors.New("no such user")

// dummyTail is the salt and hash of a real bcrypt hash of nothing anyone
// knows; with any cost in front it is a valid hash to compare against.
const dummyTail = "phsQgUVzyZl2ryy8APxaweePEg2VhiNOIAHwkGuYXkFDXxbXI.L9S"

// File is a loaded password file. It is immutable and safe for concurrent
// use.
type File struct {
	hashes map[string][]byte
	dummy  []byte // compared against for unknown users
}

// Load reads and checks the password file at path. It refuses a file that
// other users can read or write, and names the line and the fix of every
// malformed line, duplicate user and hash that is not bcrypt.
func Load(path string) (*File, error) {
	data, _, err := read(path)
	if err != nil {
		return nil, err
	}
	_, entries, err := parse(path, data)
	if err != nil {
		return nil, err
	}
	f := &File{hashes: make(map[string][]byte, len(entries))}
	costs := map[int]int{}
	for _, e := range entries {
		f.hashes[e.user] = e.hash
		c, _ := bcrypt.Cost(e.hash) // checked by parse
		costs[c]++
	}
	// Unknown users cost what most known users cost, so that timing
	// does not tell them apart.
	cost := DefaultCost
	for c, n := range costs {
		if n > costs[cost] || n == costs[cost] && c > cost {
			cost = c
		}
	}
	f.dummy = fmt.Appendf(nil, "$2a$%02d$%s", cost, dummyTail)
	return f, nil
}

// Verify reports whether password is user's password. For an unknown user
// it still runs a bcrypt comparison, against a dummy hash, so that the
// time it takes does not reveal which users exist.
func (f *File) Verify(user, password string) bool {
	hash, ok := f.hashes[user]
	if !ok {
		hash = f.dummy
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	return ok && err == nil
}

// Users returns the users in the file, sorted.
func (f *File) Users() []string {
	users := make([]string, 0, len(f.hashes))
	for u := range f.hashes {
		users = append(users, u)
	}
	slices.Sort(users)
	return users
}

// CheckUser returns an error if user cannot be a user name in a password
// file: it must be non-empty, without ':' or whitespace.
func CheckUser(user string) error {
	switch {
	case user == "":
		return errors.New("empty user name")
	case strings.Contains(user, ":"):
		return fmt.Errorf("user name %q contains ':'", user)
	case strings.ContainsFunc(user, unicode.IsSpace):
		return fmt.Errorf("user name %q contains whitespace", user)
	}
	return nil
}

// Set gives user the bcrypt hash of password at cost in the file at path,
// replacing the user's line or appending one, and keeping every other line
// as it is. It creates the file with mode 0640 if it does not exist, and
// refuses a file Load would refuse. The new file replaces the old one
// atomically with the old one's mode, owner and group.
func Set(path, user, password string, cost int) error {
	if err := CheckUser(user); err != nil {
		return fmt.Errorf("set password in %q: %w", path, err)
	}
	switch {
	case password == "":
		return fmt.Errorf("set password of %q: empty password", user)
	case len(password) > maxPassword:
		return fmt.Errorf("set password of %q: longer than %d bytes, which bcrypt cannot hash", user, maxPassword)
	case cost < bcrypt.MinCost || cost > bcrypt.MaxCost:
		return fmt.Errorf("set password of %q: cost %d: use %d to %d", user, cost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	path, lines, entries, fi, err := readForEdit(path)
	if err != nil {
		return err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return fmt.Errorf("set password of %q: %w", user, err)
	}
	line := user + ":" + string(hash)
	if i := slices.IndexFunc(entries, func(e entry) bool { return e.user == user }); i >= 0 {
		lines[entries[i].line-1] = line
	} else {
		lines = append(lines, line)
	}
	return write(path, lines, fi)
}

// Delete removes user's line from the file at path. The error wraps
// ErrUnknownUser if the user is not in the file.
func Delete(path, user string) error {
	path, lines, entries, fi, err := readForEdit(path)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(entries, func(e entry) bool { return e.user == user })
	if i < 0 {
		return fmt.Errorf("delete %q from password file %q: %w", user, path, ErrUnknownUser)
	}
	lines = slices.Delete(lines, entries[i].line-1, entries[i].line)
	return write(path, lines, fi)
}

// entry is one user's line.
type entry struct {
	user string
	hash []byte
	line int // from 1
}

// read reads the file at path, refusing one that other users can read or
// write.
func read(path string) ([]byte, os.FileInfo, error) {
	f, err := os.Open(path)
	var fi os.FileInfo
	if err == nil {
		defer f.Close()
		fi, err = f.Stat()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read password file %q: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("password file %q is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o006 != 0 {
		return nil, nil, fmt.Errorf("password file %q has mode %04o: other users can read or write it; run chmod 640 %s", path, perm, path)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, fmt.Errorf("read password file %q: %w", path, err)
	}
	return data, fi, nil
}

// parse splits data into lines and returns them with the users' entries,
// or every problem found, each naming its line.
func parse(path string, data []byte) ([]string, []entry, error) {
	var lines []string
	if len(data) > 0 {
		lines = strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	}
	var (
		entries []entry
		seen    = map[string]int{}
		errs    []error
	)
	for i, raw := range lines {
		n := i + 1
		s := strings.TrimSpace(raw)
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		user, hash, ok := strings.Cut(s, ":")
		if !ok {
			errs = append(errs, fmt.Errorf("line %d: want user:bcrypt-hash, found no ':'", n))
			continue
		}
		if err := CheckUser(user); err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w; want user:bcrypt-hash", n, err))
			continue
		}
		if !isBcrypt(hash) {
			errs = append(errs, fmt.Errorf("line %d: the hash of user %q is not bcrypt ($2a$, $2b$ or $2y$); set the password with 'tarsmq passwd'", n, user))
			continue
		}
		if first, dup := seen[user]; dup {
			errs = append(errs, fmt.Errorf("line %d: user %q is already on line %d; delete one of the lines", n, user, first))
			continue
		}
		seen[user] = n
		entries = append(entries, entry{user: user, hash: []byte(hash), line: n})
	}
	if len(errs) > 0 {
		return nil, nil, fmt.Errorf("password file %q: %w", path, errors.Join(errs...))
	}
	return lines, entries, nil
}

// isBcrypt reports whether hash is a well-formed bcrypt hash: $2a$, $2b$
// or $2y$, a two-digit cost bcrypt accepts, '$', then 53 characters of
// bcrypt's base64 (salt and hash).
func isBcrypt(hash string) bool {
	if len(hash) != 60 || hash[6] != '$' || !isDigit(rune(hash[4])) || !isDigit(rune(hash[5])) {
		return false
	}
	if !strings.HasPrefix(hash, "$2a$") && !strings.HasPrefix(hash, "$2b$") && !strings.HasPrefix(hash, "$2y$") {
		return false
	}
	for _, r := range hash[7:] {
		if r != '.' && r != '/' && !isDigit(r) && !('A' <= r && r <= 'Z') && !('a' <= r && r <= 'z') {
			return false
		}
	}
	_, err := bcrypt.Cost([]byte(hash)) // cost in range
	return err == nil
}

func isDigit(r rune) bool { return '0' <= r && r <= '9' }

// readForEdit reads the file at path, following symbolic links, for Set
// and Delete: its lines, entries and FileInfo (nil if it does not exist).
func readForEdit(path string) (string, []string, []entry, os.FileInfo, error) {
	if resolved, err := filepath.EvalSymlinks(path); err == nil {
		path = resolved
	}
	data, fi, err := read(path)
	if errors.Is(err, os.ErrNotExist) {
		return path, nil, nil, nil, nil
	} else if err != nil {
		return "", nil, nil, nil, err
	}
	lines, entries, err := parse(path, data)
	return path, lines, entries, fi, err
}

// write replaces the file at path with lines atomically: a temporary file
// in the same directory, synced, then renamed over it. It keeps the mode,
// owner and group of old, the old file's FileInfo, or makes the file 0640
// if old is nil.
func write(path string, lines []string, old os.FileInfo) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("write password file %q: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			err = fmt.Errorf("write password file %q: %w", path, err)
		}
	}()
	mode := os.FileMode(0o640)
	if old != nil {
		mode = old.Mode().Perm()
		if st, ok := old.Sys().(*syscall.Stat_t); ok {
			// Root editing a root:tarsmq 0640 file must not leave
			// it root:root, unreadable by the broker.
			if err := tmp.Chown(int(st.Uid), int(st.Gid)); err != nil {
				return fmt.Errorf("keep owner and group: %w", err)
			}
		}
	}
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	var text string
	if len(lines) > 0 {
		text = strings.Join(lines, "\n") + "\n"
	}
	if _, err := tmp.WriteString(text); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// Make the rename itself durable.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
